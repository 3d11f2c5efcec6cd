"""The plain baseline: FastAPI + ONNX Runtime, one request, one inference (how most serve).

    BASELINE_MODEL=model_repository/digits_fp32 .venv/bin/uvicorn bench.baseline:app

No batching, no queue, no metrics: decode with the shared preprocessing (so that decode
cost is the same as the service's), run a default `InferenceSession` inline on the event
loop, answer top-5. `make bench-serve` compares the served front ends against it. It takes
the image as a raw body (`Content-Type: image/...`) or as a multipart `image` upload.
`BASELINE_INTRA_OP_THREADS` (unset: ONNX Runtime's default, one spinning thread per core)
gives a replica its share of the cores when several run on one machine.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnxruntime as ort
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.datastructures import UploadFile

from runners.errors import ServingError
from runners.preprocessing import ImageLimits, decode_and_preprocess
from runners.repository import read_model

ENTRY = read_model(Path(os.environ.get("BASELINE_MODEL", "model_repository/digits_fp32")))
OPTIONS = ort.SessionOptions()
if os.environ.get("BASELINE_INTRA_OP_THREADS"):
    OPTIONS.intra_op_num_threads = int(os.environ["BASELINE_INTRA_OP_THREADS"])
SESSION = ort.InferenceSession(str(ENTRY.onnx_path), OPTIONS, providers=["CPUExecutionProvider"])
INPUT = SESSION.get_inputs()[0].name
LIMITS = ImageLimits()

app = FastAPI(title="plain FastAPI + ONNX Runtime baseline")


def _classify(data: bytes) -> JSONResponse:
    try:
        sample = decode_and_preprocess(data, ENTRY.preprocess, LIMITS)
    except ServingError as exc:
        return JSONResponse(exc.to_dict(), exc.http_status)
    logits = SESSION.run(None, {INPUT: sample[None]})[0][0]
    scores = np.exp(logits - logits.max())
    scores /= scores.sum()
    best = np.argsort(-scores)[:5]
    predictions = [{"label": ENTRY.labels[i], "score": float(scores[i])} for i in best]
    return JSONResponse({"model_name": ENTRY.name, "predictions": predictions})


@app.post("/v1/classify")
async def classify(request: Request) -> JSONResponse:
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        form = await request.form()
        upload = form.get("image")
        if not isinstance(upload, UploadFile):
            return JSONResponse({"message": "send the image as the multipart field 'image'"}, 400)
        return _classify(await upload.read())
    return _classify(await request.body())


@app.get("/healthz")
async def healthz() -> dict[str, bool]:
    return {"ok": True}

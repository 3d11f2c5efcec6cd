"""Classify images through the Triton front end, over HTTP and over gRPC, with tritonclient.

    make serve-triton                                   # in one terminal
    .venv/bin/python examples/triton_client.py a.png b.jpg --model digits_int8

Without image files it sends two held-out digits from data/digits_heldout.npz. Each image
goes as one row of the BYTES input `image` (the server decodes and preprocesses it); the
answer is the `label` (top-1) and `scores` (class probabilities) outputs.
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

REPO_ROOT = Path(__file__).resolve().parent.parent


def sample_images() -> list[bytes]:
    from PIL import Image

    encoded = []
    for pixels in np.load(REPO_ROOT / "data" / "digits_heldout.npz")["images"][:2]:
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, "PNG")
        encoded.append(buffer.getvalue())
    return encoded


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("images", nargs="*", type=Path, help="image files (default: 2 digits)")
    parser.add_argument("--model", default="digits_fp32", help="model name, e.g. digits_int8")
    parser.add_argument("--http", default="127.0.0.1:8000", help="HTTP host:port")
    parser.add_argument("--grpc", default="127.0.0.1:8001", help="gRPC host:port")
    args = parser.parse_args()
    blobs = [path.read_bytes() for path in args.images] or sample_images()
    rows = np.array(blobs, dtype=np.object_).reshape(-1, 1)  # one image per batch row

    http = httpclient.InferenceServerClient(args.http)
    image = httpclient.InferInput("image", list(rows.shape), "BYTES")
    image.set_data_from_numpy(rows)
    outputs = [httpclient.InferRequestedOutput(name) for name in ("label", "scores")]
    answer = http.infer(args.model, [image], outputs=outputs)
    show("HTTP", answer.as_numpy("label"), answer.as_numpy("scores"))

    grpc = grpcclient.InferenceServerClient(args.grpc)
    image_g = grpcclient.InferInput("image", list(rows.shape), "BYTES")
    image_g.set_data_from_numpy(rows)
    answer_g = grpc.infer(args.model, [image_g])
    show("gRPC", answer_g.as_numpy("label"), answer_g.as_numpy("scores"))


def show(protocol: str, labels: np.ndarray | None, scores: np.ndarray | None) -> None:
    if labels is None or scores is None:
        raise SystemExit(f"{protocol}: the answer lacks the label or scores output")
    for row, (label, probabilities) in enumerate(zip(labels[:, 0], scores, strict=True)):
        print(f"{protocol} image {row}: {label.decode()} ({probabilities.max():.3f})")


if __name__ == "__main__":
    main()

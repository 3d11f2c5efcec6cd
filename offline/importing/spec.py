"""The preprocessing spec: fields from a JSON file and flags, checked against the input's dims."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from offline.importing.signature import Dims, Signature, show
from runners.errors import ModelImportError
from runners.preprocessing import PreprocessSpec

SPEC_FLAGS = {
    "height": "height",
    "width": "width",
    "color_mode": "color-mode",
    "channel_order": "channel-order",
    "layout": "layout",
    "scale": "scale",
    "mean": "mean",
    "std": "std",
    "resize": "resize",
    "resize_shorter_to": "resize-shorter-to",
    "crop": "crop",
    "resample": "resample",
    "pad_anchor": "pad-anchor",
    "pad_value": "pad-value",
    "pad_tensor_value": "pad-tensor-value",
    "invert": "invert",
}


def load_spec_fields(
    spec_file: Path | None, overrides: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Spec fields from a JSON file, then the non-None overrides on top (flags win)."""
    fields: dict[str, Any] = {}
    if spec_file is not None:
        try:
            loaded = json.loads(spec_file.read_text())
        except (OSError, ValueError) as exc:
            raise ModelImportError(f"cannot read spec file {spec_file}: {exc}") from exc
        if not isinstance(loaded, dict):
            raise ModelImportError(f"spec file {spec_file} must hold a JSON object")
        fields.update(loaded)
    fields.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return fields


def _image_axes(dims: Dims, layout: str) -> tuple[int | None, int | None, int | None]:
    """(channels, height, width) of a 4-D input under a layout."""
    if layout == "NCHW":
        return dims[1], dims[2], dims[3]
    return dims[3], dims[1], dims[2]


def resolve_spec(
    fields: Mapping[str, Any], signature: Signature, model_path: Path, source: str
) -> PreprocessSpec:
    """Validate the spec, filling what the input's static dims say, and refuse contradictions.

    Layout, size and colour mode are facts of the graph, so when the user leaves them out
    they are read from it; normalisation and channel order cannot be, and keep their defaults.
    """
    fields = dict(fields)
    dims = signature.input_dims
    if "layout" not in fields:
        if dims[1] in (1, 3):
            fields["layout"] = "NCHW"
        elif dims[3] in (1, 3):
            fields["layout"] = "NHWC"
        else:
            raise ModelImportError(
                f"cannot tell the layout of input {signature.input_name!r} of {model_path} "
                f"({show(dims)}); give --layout NCHW or NHWC"
            )
    channels, height, width = _image_axes(dims, str(fields["layout"]))
    for key, value in (("height", height), ("width", width)):
        if key not in fields and value is not None:
            fields[key] = value
    if "color_mode" not in fields and channels in (1, 3):
        fields["color_mode"] = "L" if channels == 1 else "RGB"
    elif "color_mode" not in fields and channels is not None:
        raise ModelImportError(
            f"the preprocessing spec ({source}) contradicts the input of {model_path}: read as "
            f"{fields['layout']}, input {signature.input_name!r} {show(dims)} has {channels} "
            "channels; images give 1 (L) or 3 (RGB)"
        )
    try:
        spec = PreprocessSpec.model_validate(fields)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'spec'}: {err['msg']}"
            for err in exc.errors()
        )
        raise ModelImportError(f"invalid preprocessing spec ({source}): {problems}") from exc
    wrong = [
        f"{what} {want} but the input has {got}"
        for what, want, got in (
            (f"color_mode {spec.color_mode} gives channels", spec.channels, channels),
            ("height", spec.height, height),
            ("width", spec.width, width),
        )
        if got is not None and got != want
    ]
    if wrong:
        raise ModelImportError(
            f"the preprocessing spec ({source}) contradicts the input of {model_path}: input "
            f"{signature.input_name!r} is {show(dims)} read as {spec.layout}; spec "
            + "; ".join(wrong)
        )
    return spec

"""The ONNX file: load a user's model, refuse anything that is not a single-image
classifier, and rewrite dim 0 of its input and output (the batch axis)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import onnx

from runners.errors import ModelImportError

log = logging.getLogger(__name__)

Dims = tuple[int | None, ...]


@dataclass(frozen=True)
class Signature:
    """The graph's one input and one output; None marks a symbolic or unknown dim."""

    input_name: str
    input_dims: Dims
    output_name: str
    output_dims: Dims | None  # None: the graph does not declare the output's rank


def declared_dims(value_info: onnx.ValueInfoProto) -> Dims | None:
    tensor = value_info.type.tensor_type
    if not tensor.HasField("shape"):
        return None
    # Exporters mark a dynamic axis with a dim_param, no value, or a dim_value of -1 or 0
    # (PaddlePaddle, some TensorFlow converters): all of them are dynamic.
    return tuple(
        d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
        for d in tensor.shape.dim
    )


def show(dims: Dims | None) -> str:
    return "unknown rank" if dims is None else "[" + ", ".join(str(d or "?") for d in dims) + "]"


def inspect_model(path: Path) -> tuple[onnx.ModelProto, Signature]:
    """Load and check the file; refuse anything that is not a single-image classifier."""
    if not path.is_file():
        raise ModelImportError(f"model file {path} does not exist")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise ModelImportError(f"{path} is not an ONNX model: {exc}") from exc
    graph = model.graph
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in graph.initializer):
        raise ModelImportError(
            f"{path} keeps its weights in external data files; the repository holds one "
            "model.onnx per variant: re-save it with onnx.save(model, path) in one file"
        )
    try:
        onnx.checker.check_model(model)
    except Exception as exc:  # the checker raises more than ValidationError (schema errors)
        raise ModelImportError(f"{path} fails onnx.checker: {exc}") from exc
    initialisers = {t.name for t in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initialisers]
    if len(inputs) != 1:
        raise ModelImportError(
            f"{path} has {len(inputs)} graph inputs ({', '.join(i.name for i in inputs)}); "
            "an image classifier takes exactly one image tensor"
        )
    if len(graph.output) != 1:
        raise ModelImportError(
            f"{path} has {len(graph.output)} outputs ({', '.join(o.name for o in graph.output)});"
            " an image classifier returns exactly one [batch, classes] tensor"
        )
    image, scores = inputs[0], graph.output[0]
    for role, tensor in (("input", image), ("output", scores)):
        if tensor.type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
            kind = onnx.TensorProto.DataType.Name(tensor.type.tensor_type.elem_type)
            raise ModelImportError(
                f"{path}: {role} {tensor.name!r} is {kind}; an image classifier here takes and "
                "returns float32 tensors"
            )
    input_dims, output_dims = declared_dims(image), declared_dims(scores)
    if input_dims is None or len(input_dims) != 4:
        raise ModelImportError(
            f"{path}: input {image.name!r} has shape {show(input_dims)}; an image classifier "
            "takes a 4-D [batch, C, H, W] or [batch, H, W, C] tensor"
        )
    if output_dims is not None and len(output_dims) != 2:
        raise ModelImportError(
            f"{path}: output {scores.name!r} has shape {show(output_dims)}; an image "
            "classifier returns a 2-D [batch, classes] tensor (add a Flatten or Reshape to "
            "[batch, classes] before exporting)"
        )
    return model, Signature(image.name, input_dims, scores.name, output_dims)


def final_op(model: onnx.ModelProto, output: str) -> str | None:
    """The operator that makes `output`, looking through ops that only reshape or rename."""
    producers = {name: node for node in model.graph.node for name in node.output}
    node = producers.get(output)
    while node is not None and node.op_type in _PASS_THROUGH and node.input:
        node = producers.get(node.input[0])
    return None if node is None else node.op_type


_PASS_THROUGH = frozenset({"Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Cast"})
BATCH_DIM = "batch"


def with_fixed_dims(
    model: onnx.ModelProto, signature: Signature, sizes: Dims
) -> tuple[onnx.ModelProto, Signature, list[str]]:
    """The model with its dynamic dims made plain: a batch axis marked by dim_value -1 or 0
    becomes a named dim, and dynamic dims other than the batch take `sizes` (the spec's).

    Returns the model (the same object when nothing changes), its signature and what changed.
    """
    changes: list[str] = []
    rewritten = onnx.ModelProto()
    rewritten.CopyFrom(model)
    graph = rewritten.graph
    for tensor in (*graph.input, *graph.output):
        if tensor.name not in (signature.input_name, signature.output_name):
            continue
        dims = tensor.type.tensor_type.shape.dim
        for axis, dim in enumerate(dims):
            dynamic = not dim.HasField("dim_param") and not (
                dim.HasField("dim_value") and dim.dim_value > 0
            )
            if axis == 0 and dynamic:
                changes.append(
                    f"{tensor.name!r} marks its batch axis with dim_value {dim.dim_value}; it "
                    f"is read as dynamic (named {BATCH_DIM!r})"
                )
                dim.dim_param = BATCH_DIM
            elif axis > 0 and tensor.name == signature.input_name:
                want = sizes[axis]
                if (dynamic or dim.HasField("dim_param")) and want is not None:
                    dim.dim_value = want
                    changes.append(
                        f"dynamic axis {axis} of input {tensor.name!r} is fixed to {want} from "
                        "the preprocessing spec"
                    )
    if not changes:
        return model, signature, []
    del graph.value_info[:]  # recorded with the old dims; inferred afresh
    try:
        rewritten = onnx.shape_inference.infer_shapes(rewritten)
    except Exception as exc:  # ONNX Runtime infers shapes itself at load; these are optional
        log.info("shape inference after fixing the dims failed (%s); continuing without", exc)
    image = next(i for i in rewritten.graph.input if i.name == signature.input_name)
    fixed = Signature(
        signature.input_name,
        declared_dims(image) or signature.input_dims,
        signature.output_name,
        signature.output_dims,
    )
    return rewritten, fixed, changes


def with_batch_dim(model: onnx.ModelProto, signature: Signature, value: int | str) -> bytes:
    """The model with dim 0 of its input and output set to `value` (a size or a name)."""
    rewritten = onnx.ModelProto()
    rewritten.CopyFrom(model)
    graph = rewritten.graph
    for tensor in (*graph.input, *graph.output):
        dims = tensor.type.tensor_type.shape.dim
        if tensor.name in (signature.input_name, signature.output_name) and dims:
            dim = dims[0]
            if isinstance(value, str):
                dim.dim_param = value  # dim_value and dim_param are a oneof: this clears it
            else:
                dim.dim_value = value
    # Intermediate shapes recorded at export pin the old batch size; infer them afresh.
    del graph.value_info[:]
    try:
        rewritten = onnx.shape_inference.infer_shapes(rewritten)
    except Exception as exc:  # ONNX Runtime infers shapes itself at load; these are optional
        log.info("shape inference after the batch rewrite failed (%s); continuing without", exc)
    return bytes(rewritten.SerializeToString())

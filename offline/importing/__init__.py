"""Bring your own model: check a user's ONNX image classifier, then publish it like ours.

Every check runs before anything is written: the file is ONNX and an image classifier
(one 4-D float32 input, one 2-D [batch, classes] output), the preprocessing spec matches
the input's dims, the labels match the classes, and every image decodes. A graph that pins
batch 1 is made dynamic when that provably gives the same rows, else served unbatched.
Then `offline.publish` quantizes, gates, measures and writes both variants.
"""

from offline.importing.batch_axis import plan_batching
from offline.importing.cli import add_arguments, main, run
from offline.importing.images import load_images, read_labels
from offline.importing.pipeline import import_model
from offline.importing.signature import inspect_model
from offline.importing.spec import resolve_spec

__all__ = [
    "add_arguments",
    "import_model",
    "inspect_model",
    "load_images",
    "main",
    "plan_batching",
    "read_labels",
    "resolve_spec",
    "run",
]

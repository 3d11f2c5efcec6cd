"""Inference engines behind one interface, chosen by name from a registry."""

from runners.backends.base import Backend, TensorInfo
from runners.backends.registry import BACKENDS, create_backend

__all__ = ["BACKENDS", "Backend", "TensorInfo", "create_backend"]

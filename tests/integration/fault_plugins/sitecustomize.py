"""Fault injection for tests/integration/test_model_faults.py: a slow model load.

Put on PYTHONPATH by that test only. Every process of the server under test imports it at
start-up; where FAULT_SLOW_LOAD_S is set, every backend in the registry is replaced by a
subclass that sleeps that long before it compiles its model, and writes `<model>.warm` into
FAULT_MARKERS_DIR once its warm-up has run, so the test can tell when each variant was
loaded and warm. The engines themselves are the real ones.
"""

from __future__ import annotations

import os

if os.environ.get("FAULT_SLOW_LOAD_S"):
    import time
    from pathlib import Path

    from runners.backends import registry
    from runners.backends.base import Backend, TensorInfo

    _DELAY_S = float(os.environ["FAULT_SLOW_LOAD_S"])
    _MARKERS = Path(os.environ["FAULT_MARKERS_DIR"])

    def _slow(engine: type[Backend]) -> type[Backend]:
        class Slow(engine):  # type: ignore[valid-type, misc]
            def _load(self) -> tuple[TensorInfo, TensorInfo]:
                time.sleep(_DELAY_S)
                loaded: tuple[TensorInfo, TensorInfo] = super()._load()
                return loaded

            def warmup(self, batch_sizes: tuple[int, ...] = (1,)) -> None:
                super().warmup(batch_sizes)
                # The model's folder is named after it: <repository>/<model>/<version>/.
                name = self.model_path.parent.parent.name
                (_MARKERS / f"{name}.warm").write_text(f"{os.getpid()} {time.time()}\n")

        return Slow

    for _name, _engine in list(registry.BACKENDS.items()):
        registry.BACKENDS[_name] = _slow(_engine)

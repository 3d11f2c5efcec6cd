"""Every test, and every server a test starts, has its own data directory: the registry a
developer's `make serve` keeps under data/ never reaches a test, nor a test's the developer."""

import atexit
import os
import shutil
import tempfile

_DATA_DIR = tempfile.mkdtemp(prefix="imgserve-test-data-")
os.environ["IMGSERVE_DATA_DIR"] = _DATA_DIR
os.environ.pop("IMGSERVE_REGISTRY_URI", None)
atexit.register(shutil.rmtree, _DATA_DIR, True)

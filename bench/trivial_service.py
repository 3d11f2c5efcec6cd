"""BentoML's floor: a trivial endpoint with no model that takes the same image upload.

    .venv/bin/bentoml serve bench.trivial_service:Trivial --port 3001

`make bench-serve` divides the service's throughput by this one's: what the framework
costs per request before any model runs. It is written the framework's own way (a
`@bentoml.api` taking a PIL image as a multipart `image` part; BentoML's native API does
not take a raw image body), with access logging off like the service.
"""

from __future__ import annotations

from typing import Any

import bentoml
from PIL.Image import Image

from serving.bentoml_compat import service_config


@bentoml.service(name="trivial", workers=1, **service_config())
class Trivial:
    @bentoml.api(route="/v1/classify")
    def classify(self, image: Image) -> dict[str, Any]:
        return {"predictions": [{"label": "0", "score": 1.0}], "size": list(image.size)}

"""The BentoML front end: settings, the HTTP app, admission and batching, metrics, OpenAPI docs.

`service.py` at the repository root composes these into the entry service and one runner
service per served variant; nothing here imports BentoML at module import time except the
runner factory, so the HTTP app can be exercised on its own.
"""

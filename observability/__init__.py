"""Observability as code: the Grafana dashboards, generated with grafana-foundation-sdk."""

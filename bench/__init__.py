"""Measurement: raw in-process benchmarks (serving benchmarks and load tests live beside)."""

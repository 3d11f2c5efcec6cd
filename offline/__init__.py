"""Offline model work: train, export, quantize, evaluate, import, publish."""

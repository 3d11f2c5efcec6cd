# The commands a user types. Each one does its own setup first.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
REPO   ?= model_repository

.PHONY: setup setup-train models profiles serve test lint bench-raw clean

# Serving, offline build and test tools; no torch (training is the train extra).
$(VENV)/.setup: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[build,dev]'
	touch $@

$(VENV)/.setup-train: $(VENV)/.setup
	$(PY) -m pip install -q -e '.[build,dev,train]'
	touch $@

setup: $(VENV)/.setup

setup-train: $(VENV)/.setup-train

## models: build whatever the default model repository is missing (INT8 through the gate)
models: setup
	$(PY) -m offline --repository $(REPO) models

## profiles: also build the MobileNetV2- and ResNet-50-class load profiles (minutes)
profiles: setup
	$(PY) -m offline --repository $(REPO) models --profiles

## serve: set up, build the default model repository if missing, then serve it (BentoML)
PORT ?= 3000
serve: models
	IMGSERVE_REPOSITORY=$(abspath $(REPO)) $(VENV)/bin/bentoml serve service:ImageClassifier --host 127.0.0.1 --port $(PORT)

## test: set up (with torch, for the training test), then the whole suite
test: setup-train
	$(PY) -m pytest

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

## bench-raw: in-process throughput and latency per model x variant x backend x batch
bench-raw: profiles
	$(PY) -m bench.raw --repository $(REPO)

clean:
	rm -rf $(VENV) results .pytest_cache .mypy_cache .ruff_cache

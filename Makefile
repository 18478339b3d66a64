# Two commands do all set-up (see README):
#   make reproduce   create .venv if missing, install, run the notebooks on the CPU default
#   make test        same bootstrap, then lint, type check, pytest and nbval
#   make lab         same bootstrap, then JupyterLab on the workspace (.venv kernel, ipywidgets)
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
PROFILE ?= cpu-tiny
DATA_ROOT ?= data
PYTEST_ARGS ?=
LAB_PORT ?= 8888
LAB_ARGS ?=

# Every cache that Jupyter, matplotlib, torch or HF would put in $HOME lives in .cache/.
CACHE := $(CURDIR)/.cache
export MPLCONFIGDIR := $(CACHE)/matplotlib
export JUPYTER_CONFIG_DIR := $(CACHE)/jupyter/config
export JUPYTER_DATA_DIR := $(CACHE)/jupyter/data
export JUPYTER_RUNTIME_DIR := $(CACHE)/jupyter/runtime
export JUPYTER_PLATFORM_DIRS := 1
export IPYTHONDIR := $(CACHE)/ipython
export HF_HOME := $(CACHE)/huggingface
export TORCH_HOME := $(CACHE)/torch
export XDG_CACHE_HOME := $(CACHE)/xdg
export PIP_DISABLE_PIP_VERSION_CHECK := 1
export PYDEVD_DISABLE_FILE_VALIDATION := 1

.PHONY: venv caches reproduce lab test lint typecheck pytest format clean

# The stamp depends on the install inputs: editing them reinstalls, nothing else does.
$(VENV)/.installed: pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	@touch $@

venv: $(VENV)/.installed

caches:
	@mkdir -p $(MPLCONFIGDIR) $(JUPYTER_CONFIG_DIR) $(JUPYTER_DATA_DIR) $(JUPYTER_RUNTIME_DIR) $(IPYTHONDIR) $(HF_HOME) $(TORCH_HOME) $(XDG_CACHE_HOME)

reproduce: venv caches
	$(PY) -m hdmnet_core reproduce --profile $(PROFILE) --data-root $(DATA_ROOT)

# JupyterLab from .venv: its "python3" kernel is the .venv interpreter and ipywidgets 8
# needs no extension build. Widget state is saved with the notebook (Lab setting
# saveState) so that stored widgets show without a kernel. No update or news checks (no
# internet needed). Both settings are written once; change them in Lab's Settings
# editor. --allow-root only when run as root (containers). Pass e.g.
# LAB_ARGS="--no-browser --ip=0.0.0.0" for a remote host.
LAB_SETTINGS := $(JUPYTER_CONFIG_DIR)/lab/user-settings
LAB_WIDGET_SETTINGS := $(LAB_SETTINGS)/@jupyter-widgets/jupyterlab-manager/plugin.jupyterlab-settings
LAB_NEWS_SETTINGS := $(LAB_SETTINGS)/@jupyterlab/apputils-extension/notification.jupyterlab-settings
lab: venv caches
	@mkdir -p $(dir $(LAB_WIDGET_SETTINGS)) $(dir $(LAB_NEWS_SETTINGS))
	@test -f $(LAB_WIDGET_SETTINGS) || echo '{"saveState": true}' > $(LAB_WIDGET_SETTINGS)
	@test -f $(LAB_NEWS_SETTINGS) || echo '{"fetchNews": "false"}' > $(LAB_NEWS_SETTINGS)
	$(PY) -m jupyter lab --ServerApp.root_dir=$(CURDIR) --ServerApp.preferred_dir=$(CURDIR)/notebooks \
		--ServerApp.port=$(LAB_PORT) --LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate \
		--LabApp.news_url=None $(if $(filter 0,$(shell id -u)),--allow-root) $(LAB_ARGS)

lint: venv
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

typecheck: venv
	$(PY) -m mypy

pytest: venv caches
	@mkdir -p $(CACHE)/tmp
	TMPDIR=$(CACHE)/tmp OMP_NUM_THREADS=1 $(PY) -m pytest -n 2 --dist loadfile --basetemp=$(CACHE)/pytest \
		--nbval --nbval-current-env tests notebooks $(PYTEST_ARGS)

test: lint typecheck pytest

format: venv
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

clean:
	rm -rf .cache .pytest_cache .mypy_cache .ruff_cache runs

# Quick start: `make run` (set up if needed, then the main job) and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
# A GPU machine: make setup TORCH_SPEC=torch==<a CUDA build> EXTRAS=cuda,mmseg,knn,postgres,cluster,dev
EXTRAS ?= sparse,mmseg,knn,postgres,cluster,dev
TORCH_SPEC ?= torch==2.13.0
# The stamp changes with pyproject.toml and EXTRAS, so a changed dependency list re-installs; otherwise
# set-up is a no-op.
STAMP := $(VENV)/.installed-$(shell (cat pyproject.toml; echo "$(EXTRAS) $(TORCH_SPEC)") | sha1sum | cut -c1-12)

.PHONY: setup run test lint format clean-results

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet '$(TORCH_SPEC)'
	$(PY) -m pip install --quiet -e ".[$(EXTRAS)]"
	rm -f $(VENV)/.installed-*
	touch $@

setup: $(STAMP)

run: setup
	$(VENV)/bin/harness run suites/table5.yaml --report

test: setup lint
	$(VENV)/bin/pytest

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean-results:
	rm -rf results/harness.db* results/artifacts results/cache reports/*.pdf reports/*.md reports/*.tex reports/*.html reports/*.png

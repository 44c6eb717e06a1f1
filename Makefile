# Two commands do all set-up: `make lab` and `make test`.
# Each creates or reuses .venv and installs what it needs (pip only).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
ROOT   := $(shell [ "$$(id -u)" = 0 ] && echo --allow-root)

.PHONY: lab test browser html bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(VENV)/.lab: pyproject.toml | $(PY)
	$(PY) -m pip install -q -e ".[lab]"
	touch $@

$(VENV)/.test: pyproject.toml | $(PY)
	$(PY) -m pip install -q -e ".[test]"
	touch $@ $(VENV)/.lab

lab: $(VENV)/.lab
	$(VENV)/bin/jupyter lab $(ROOT) notebooks/00-start-here.ipynb

test: $(VENV)/.test browser
	$(PY) -m pytest

# Chromium for the real-browser test: use one on PATH, else install Debian's
# package when we are root with apt-get; otherwise the test skips (fails in CI).
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	 { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	   apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null; } || \
	 echo "no Chromium: the browser test will be skipped (CI=true makes it fail)"

bench: $(VENV)/.test
	$(PY) benchmarks/engine_scale.py

clean:
	rm -rf $(VENV) build .pytest_cache

# Static HTML of every notebook, executed (step images inline), under build/html, for
# reading without a kernel. Execution happens on copies in a temporary directory, so
# the committed notebooks keep their cleared outputs. Widget state is not stored: the
# page shows each widget's static rendering instead of an empty box, and where a
# notebook shows a Stepper that is the HTML player of its call (KVMVIZ_HTML_PLAYER).
html: $(VENV)/.test
	rm -rf build/html && mkdir -p build/html
	tmp=$$(mktemp -d) && cp notebooks/*.ipynb "$$tmp"/ && \
	KVMVIZ_HTML_PLAYER=1 $(VENV)/bin/jupyter nbconvert --to html --execute --ExecutePreprocessor.timeout=600 \
	  --ExecutePreprocessor.store_widget_state=False --output-dir build/html "$$tmp"/*.ipynb; status=$$?; rm -rf "$$tmp"; exit $$status

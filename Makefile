# The two commands of the README:
#   make up     set up .venv and run the swarm on the embedded default (one machine, no GPU, no API key)
#   make test   set up .venv and run the checks and the test suite (what CI runs)
.PHONY: setup up test lint bench

setup:
	bash scripts/setup.sh

up: setup
	.venv/bin/swarm up $(ARGS)

lint: setup
	.venv/bin/ruff check .
	.venv/bin/mypy

test: lint
	.venv/bin/python -m pytest -q -ra $(PYTEST_ARGS)

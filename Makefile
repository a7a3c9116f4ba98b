# Dockyard: the two set-up commands of the README are `make demo` and `make test`.
.PHONY: setup demo test test-unit test-integration lint bench down clean

setup:
	deploy/setup.sh

demo:
	deploy/demo.sh

test: setup lint
	.venv/bin/python -m pytest -q -ra --durations=15 tests

test-unit: setup
	.venv/bin/python -m pytest -q tests/unit

test-integration: setup
	.venv/bin/python -m pytest -q -ra tests/integration

lint: setup
	.venv/bin/ruff check common services cli tests bench deploy
	.venv/bin/ruff format --check common services cli tests bench deploy
	.venv/bin/mypy

bench:
	DOCKYARD_EXTRAS=test,dev,bench deploy/setup.sh
	.venv/bin/python -m bench

down:
	.venv/bin/dockyard down

clean:
	rm -rf .venv build *.egg-info

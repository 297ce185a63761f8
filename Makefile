.PHONY: setup serve worker test test-fast lint demo e2e

PY_DIRS = backend worker rubric_judge tests benchmarks scripts support
#: the pure modules: no torch, Flask or Redis; type-checked with mypy
PURE = backend/core backend/settings.py backend/training_keys.py

setup:
	scripts/bootstrap.sh

serve: setup
	scripts/ensure-redis.sh
	.venv/bin/rubric-judge serve

# everything: lint, format, types, then every test (the real-Label-Studio e2e and the demo included; README.md
# says how long it took from a fresh clone)
test: setup lint
	scripts/ensure-system-deps.sh
	scripts/ensure-redis.sh
	.venv/bin/python -m pytest -q -ra

# the edit loop: every test but the slow, e2e and soak ones
test-fast: setup
	scripts/ensure-redis.sh
	.venv/bin/python -m pytest -q -ra -m "not slow and not e2e and not soak"

lint: setup
	.venv/bin/ruff check $(PY_DIRS)
	.venv/bin/ruff format --check $(PY_DIRS)
	.venv/bin/mypy $(PURE)
	.venv/bin/lint-imports

# Label Studio + Redis + backend + worker, a day-one project and one with 20 prepared annotations; Ctrl-C stops all
demo: setup
	.venv/bin/python scripts/demo.py

e2e: setup
	scripts/ensure-system-deps.sh
	scripts/ensure-redis.sh
	.venv/bin/python -m pytest -q -ra tests/e2e

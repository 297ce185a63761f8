.PHONY: setup serve worker test lint demo e2e

setup:
	scripts/bootstrap.sh

serve: setup
	scripts/ensure-redis.sh
	.venv/bin/rubric-judge serve

test: setup
	scripts/ensure-system-deps.sh
	scripts/ensure-redis.sh
	.venv/bin/ruff check backend worker tests benchmarks scripts
	.venv/bin/python -m pytest -q -ra

lint: setup
	.venv/bin/ruff check backend worker tests benchmarks scripts

demo: setup
	.venv/bin/python scripts/demo.py

e2e: setup
	scripts/ensure-system-deps.sh
	scripts/ensure-redis.sh
	.venv/bin/python -m pytest -q -ra tests/e2e

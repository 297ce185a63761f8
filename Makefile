.PHONY: setup serve worker test lint

setup:
	scripts/bootstrap.sh

serve: setup
	scripts/ensure-redis.sh
	.venv/bin/rubric-judge serve

test: setup
	scripts/ensure-redis.sh
	.venv/bin/ruff check backend worker tests benchmarks
	.venv/bin/python -m pytest -q -ra

lint: setup
	.venv/bin/ruff check backend worker tests benchmarks

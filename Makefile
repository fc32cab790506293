# Developer shortcuts; each target does its own set-up (run as root).
.PHONY: setup test test-unit run trace bench clean

setup:
	scripts/setup --test

test:
	scripts/test

# The tests that need neither root nor a kernel with BPF.
test-unit: setup
	.venv/bin/python -m pytest -m "not kernel"

run:
	scripts/run watch

trace:
	scripts/run trace

clean:
	rm -rf .venv build dist *.egg-info .pytest_cache
	find . -name __pycache__ -prune -exec rm -rf {} +

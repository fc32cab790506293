# Developer shortcuts.  `make unit` needs neither root nor apt: it makes its
# own venv (.venv-unit) and runs the unit layer; the rest do their own
# set-up as root.
.PHONY: setup test unit test-unit run trace bench bpf deb clean

PYTHON ?= python3

setup:
	scripts/setup --test

test:
	scripts/test

# The unit layer: a fake host, no root, no kernel, no apt.
unit: .venv-unit/.ready
	.venv-unit/bin/python -m pytest -q -m unit tests/unit

.venv-unit/.ready: pyproject.toml
	$(PYTHON) -m venv .venv-unit
	.venv-unit/bin/pip install -q --disable-pip-version-check ".[test]"
	touch $@

test-unit: unit

# The prebuilt BPF program (clang only): bpf/resreap.bpf.o.
bpf:
	scripts/build-bpf

# The Debian package (as root: installs debhelper and dh-virtualenv): dist/.
deb:
	scripts/build-deb

run:
	scripts/run watch

trace:
	scripts/run trace

clean:
	rm -rf .venv .venv-unit build dist *.egg-info .pytest_cache bpf/*.o
	find . -name __pycache__ -prune -exec rm -rf {} +

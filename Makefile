# Two set-up commands (see README): `make train` and `make test`.
# Both create (or reuse) .venv/ and install the project with the test and bench extras.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed-stamp

.PHONY: venv train test test-slow bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -e ".[test,bench]"
	touch $(STAMP)

venv: $(STAMP)

# Embedded default: ProtoSAC on Pendulum-v1 (gymnax), 10k env steps, ~30 s on 2 CPU cores.
# Writes checkpoints/pendulum-protosac-0-<time>/ with final/ params, metrics and prototypes.png.
train: $(STAMP)
	$(VENV)/bin/python train.py --env pendulum

test: $(STAMP)
	$(VENV)/bin/python -m pytest

# The long learning checks (3 seeds x 2 actors on Pendulum, MountainCar).
test-slow: $(STAMP)
	$(VENV)/bin/python -m pytest -m slow

bench: $(STAMP)
	$(VENV)/bin/python benchmarks/update_speed.py

clean:
	rm -rf $(VENV) .pytest_cache

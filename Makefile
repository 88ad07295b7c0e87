# The two commands of the README. Both set up what they need first (idempotent).
VENV ?= .venv
# the venv's console scripts (slimkit) come first on PATH for everything make runs
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: run test setup

# run the default job end to end on the embedded SmolLM2-135M (prune → quantize, before/after table)
run:
	bash scripts/setup.sh
	$(VENV)/bin/slimkit

# run the whole test suite (unit, contract, CLI, and the integration test on the real model)
test:
	bash scripts/setup.sh --test
	$(VENV)/bin/python -m pytest

setup:
	bash scripts/setup.sh --test

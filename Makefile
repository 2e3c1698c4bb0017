# agentrl: two commands do everything on a fresh machine.
#   make demo   set up, then run the main job: a search agent on SearchQA (tiny model, SFT
#               warm-up, GRPO, held-out exact match before/after RL)
#               (make demo-arithmetic: the same for multi-turn arithmetic with "try again" feedback)
#   make test   set up (Python deps, Docker engine + sandbox image, bubblewrap), then run the tests

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# The CPU build of PyTorch is installed first and pinned: a plain `torch` requirement would
# otherwise pull the newest release with gigabytes of CUDA packages.
TORCH_PIN := torch==2.13.0

.PHONY: demo demo-search demo-arithmetic test install sandbox-setup bench clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH_PIN)
	$(BIN)/pip install --quiet -e ".[test]"
	touch $@

install: $(BIN)/.installed

# Docker engine (Debian's docker.io), bubblewrap, debootstrap, the daemon and the sandbox image.
# Needs root (or sudo). Without it, sandbox tests skip with the reason (CI makes them required).
sandbox-setup: install
	bash scripts/setup_sandboxes.sh

# The main job: a search agent on SearchQA over invented worlds, SFT warm-up then GRPO, held-out EM.
demo: install
	$(BIN)/agentrl demo --task search

demo-search: demo

# Multi-turn arithmetic with UFO "try again" feedback: Succ@1 / Succ@5 before and after RL.
demo-arithmetic: install
	$(BIN)/agentrl demo --task arithmetic

test: install
	-@bash scripts/setup_sandboxes.sh || echo "sandbox set-up failed: docker/bwrap tests will skip (see above)"
	$(BIN)/python -m pytest -q

bench: install
	$(BIN)/python benchmarks/rl_update_overhead.py
	$(BIN)/python benchmarks/generation_throughput.py
	$(BIN)/python benchmarks/sandbox_latency.py
	$(BIN)/python benchmarks/search_tools.py

clean:
	rm -rf $(VENV) runs .pytest_cache

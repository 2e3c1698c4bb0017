# agentrl: two commands do everything on a fresh machine.
#   make demo   set up, then run the main job: a search agent on SearchQA (tiny model, SFT
#               warm-up, GRPO, held-out exact match before/after RL)
#               (make demo-arithmetic: the same for multi-turn arithmetic with "try again" feedback)
#   make test   set up (Python deps, Docker engine + sandbox image, bubblewrap, vLLM's CPU build in
#               .venv-vllm), then run the tests (the vLLM ones in .venv-vllm)

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# The CPU build of PyTorch is installed first and pinned: a plain `torch` requirement would
# otherwise pull the newest release with gigabytes of CUDA packages.
TORCH_PIN := torch==2.13.0

.PHONY: demo demo-search demo-arithmetic test install sandbox-setup vllm bench bench-trl clean

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

# vLLM's CPU build in its own venv (it pins transformers below the project's): the vllm
# generation backend and its tests. Idempotent (scripts/setup_vllm.sh).
vllm:
	bash scripts/setup_vllm.sh

# The main job: a search agent on SearchQA over invented worlds, SFT warm-up then GRPO, held-out EM.
demo: install
	$(BIN)/agentrl demo --task search

demo-search: demo

# Multi-turn arithmetic with UFO "try again" feedback: Succ@1 / Succ@5 before and after RL.
demo-arithmetic: install
	$(BIN)/agentrl demo --task arithmetic

test: install
	-@bash scripts/setup_sandboxes.sh || echo "sandbox set-up failed: docker/bwrap tests will skip (see above)"
	$(BIN)/python -m pytest -q --ignore=tests/on_vllm
	@if bash scripts/setup_vllm.sh; then .venv-vllm/bin/python -m pytest -q tests/on_vllm; \
	elif [ "$$AGENTRL_REQUIRE_VLLM" = 1 ]; then echo "vLLM set-up failed (above) and AGENTRL_REQUIRE_VLLM=1"; exit 1; \
	else echo "vLLM set-up failed (above): the vLLM tests (tests/on_vllm) did not run"; fi

bench: install
	$(BIN)/python benchmarks/rl_update_overhead.py
	$(BIN)/python benchmarks/generation_throughput.py
	$(BIN)/python benchmarks/sandbox_latency.py
	$(BIN)/python benchmarks/search_tools.py

# agentrl against TRL's GRPOTrainer (TRL in its own venv, .venv-trl): docs/scale.md, section 7.
bench-trl: install
	bash scripts/setup_trl.sh
	$(BIN)/python benchmarks/vs_trl.py

clean:
	rm -rf $(VENV) .venv-vllm .venv-trl runs .pytest_cache

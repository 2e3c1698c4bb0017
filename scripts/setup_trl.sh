#!/usr/bin/env bash
# Build `.venv-trl`: a separate environment with TRL for benchmarks/vs_trl.py.
#
#   bash scripts/setup_trl.sh          (or: make bench-trl, which calls it)
#
# TRL lives in its own venv so its pins never move the project's. The CPU build of PyTorch is
# installed first and pinned (a plain `torch` requirement would pull the CUDA build), then
# TRL at a fixed release, then agentrl itself without its dependencies (the TRL side imports
# agentrl only to build the same prompts and rewards; it never trains with it).
# Idempotent: a venv whose marker file is newer than this script and pyproject.toml is left
# alone (scripts/_side_venv.sh).
set -euo pipefail

cd "$(dirname "$0")/.."
VENV=".venv-trl"
TRL_PIN="trl==1.16.0"
source scripts/_side_venv.sh
side_venv_begin setup_trl "$0"
log "installing $TRL_PIN"
"$VENV/bin/pip" install --quiet "$TORCH_PIN" "$TRL_PIN" jmespath  # jmespath: TRL parses tool calls with it
log "installing agentrl (no dependencies)"
"$VENV/bin/pip" install --quiet --no-deps -e .
"$VENV/bin/python" -c "import torch, transformers, trl; print('[setup_trl] torch', torch.__version__, '| transformers', transformers.__version__, '| trl', trl.__version__)"
side_venv_end

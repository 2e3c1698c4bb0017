# Sourced by the scripts that build a side environment (setup_vllm.sh, setup_trl.sh): a venv of
# its own for a package whose pins would move the project's.
#
#   side_venv_begin NAME SCRIPT   exits 0 when NAME's marker file is newer than SCRIPT and
#                                 pyproject.toml (nothing to do); else creates the venv and
#                                 installs the CPU build of PyTorch first, pinned (a plain
#                                 `torch` requirement would pull the CUDA build)
#   side_venv_end                 writes the marker file, once everything is installed
# Both need VENV, and leave `log` defined.

TORCH_PIN="torch==2.13.0"

log() { echo "[${SIDE_NAME:-setup}] $*"; }

side_venv_begin() {
  SIDE_NAME="$1"
  local script="$2"
  PYTHON="${PYTHON:-python3}"
  MARKER="$VENV/.installed"
  if [ -f "$MARKER" ] && [ "$MARKER" -nt "$script" ] && [ "$MARKER" -nt pyproject.toml ]; then
    log "$VENV is up to date"
    exit 0
  fi
  log "creating $VENV"
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --upgrade pip
  log "installing $TORCH_PIN (CPU build)"
  "$VENV/bin/pip" install --quiet "$TORCH_PIN"
}

side_venv_end() {
  touch "$MARKER"
}

#!/usr/bin/env bash
# Install and start everything agentrl sandboxes need on a Debian/Ubuntu machine.
#
#   bash scripts/setup_sandboxes.sh          (as root, or with sudo)
#
# Idempotent: each step is skipped when already done.
#   1. apt-get install docker.io bubblewrap debootstrap (only the missing ones)
#   2. start dockerd in the background when no daemon answers (no systemd needed)
#   3. create the dedicated non-root user the bwrap backend drops to when run as root
#   4. build the sandbox image (agentrl sandbox build: Dockerfile if a registry answers,
#      else debootstrap + docker import)
# Afterwards `agentrl sandbox doctor` reports what works.
set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
if [ ! -x "$PYTHON" ]; then PYTHON="$(command -v python3)"; fi
SANDBOX_USER="agentrl-sandbox"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

log() { echo "[setup_sandboxes] $*"; }

# 1. packages ---------------------------------------------------------------------------------
missing=()
command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
command -v bwrap >/dev/null 2>&1 || missing+=(bubblewrap)
command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
if [ "${#missing[@]}" -gt 0 ]; then
  log "installing ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
  log "docker.io, bubblewrap and debootstrap already installed"
fi

# 2. docker daemon ----------------------------------------------------------------------------
if docker info >/dev/null 2>&1; then
  log "docker daemon already running"
else
  # A machine restored from a snapshot (or a daemon killed hard) leaves its pid files behind.
  # dockerd refuses to start while the pid written there is alive, and after the pid counter
  # wraps that pid can belong to any other process. Remove a pid file whose process is not
  # the daemon it names.
  for pidfile in /var/run/docker.pid /run/docker/containerd/containerd.pid; do
    if [ -f "$pidfile" ]; then
      pid="$(cat "$pidfile" 2>/dev/null || true)"
      comm="$(cat "/proc/$pid/comm" 2>/dev/null || true)"
      case "$comm" in
        dockerd|containerd) ;;
        *) log "removing stale $pidfile (pid ${pid:-?} is ${comm:-not running})"; $SUDO rm -f "$pidfile" ;;
      esac
    fi
  done
  log "starting dockerd in the background (log: /var/log/dockerd.log)"
  $SUDO sh -c 'nohup dockerd > /var/log/dockerd.log 2>&1 &'
  for _ in $(seq 1 60); do
    if docker info >/dev/null 2>&1; then break; fi
    sleep 1
  done
  if ! docker info >/dev/null 2>&1; then
    log "dockerd did not start; the end of /var/log/dockerd.log:"
    tail -n 5 /var/log/dockerd.log 2>/dev/null || true
    exit 1
  fi
fi

# 3. dedicated sandbox user -------------------------------------------------------------------
if id "$SANDBOX_USER" >/dev/null 2>&1; then
  log "user $SANDBOX_USER exists"
else
  log "creating user $SANDBOX_USER"
  $SUDO useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin "$SANDBOX_USER"
fi

# 4. sandbox image ----------------------------------------------------------------------------
IMAGE="${AGENTRL_SANDBOX_IMAGE:-agentrl-sandbox:latest}"
if docker image inspect "$IMAGE" >/dev/null 2>&1 && [ "${REBUILD:-0}" != "1" ]; then
  log "image $IMAGE exists (REBUILD=1 to rebuild)"
else
  log "building image $IMAGE"
  $SUDO "$PYTHON" -m agentrl.sandboxes.cli build
fi

"$PYTHON" -m agentrl.sandboxes.cli doctor

"""Fixtures for sandbox tests: one parameter per backend, small limits, leak checks.

A backend that is not available here makes its tests skip with the reason, unless
``AGENTRL_REQUIRE_SANDBOXES=1`` (CI sets it after ``scripts/setup_sandboxes.sh``): then a
missing backend is a failure.
"""

from __future__ import annotations

import functools
import os
import tempfile
import time
from typing import Callable, Iterator

import pytest

from agentrl.sandboxes import Sandbox, create

# Connections the docker SDK's pools may keep open to the daemon (bounded, reused).
DOCKER_POOL_SOCKETS = 24
REQUIRE = os.environ.get("AGENTRL_REQUIRE_SANDBOXES") == "1"

# Small bounds keep the suite fast and the machine unaffected.
SMALL = dict(
    memory_mb=128,
    pids=32,
    disk_mb=8,
    tmp_mb=4,
    timeout=5.0,
    grace=0.5,
    max_output_bytes=4096,
    output_limit_bytes=1 << 20,
    max_code_bytes=64 * 1024,
)


@functools.lru_cache(maxsize=None)
def availability(backend: str) -> tuple[bool, str]:
    from agentrl.sandboxes.backends import bwrap_ready, docker_ready

    return docker_ready() if backend == "docker" else bwrap_ready()


def require(backend: str) -> None:
    ok, why = availability(backend)
    if ok:
        return
    message = f"{backend} backend unavailable: {why}"
    if REQUIRE:
        pytest.fail(f"AGENTRL_REQUIRE_SANDBOXES=1 but the {message}", pytrace=False)
    pytest.skip(message)


@pytest.fixture(
    params=[pytest.param("docker", marks=pytest.mark.docker), pytest.param("bwrap", marks=pytest.mark.bwrap)]
)
def backend(request: pytest.FixtureRequest) -> str:
    require(request.param)
    return request.param


# ---- leak accounting ---------------------------------------------------------------------------


def descendants(pid: int | None = None) -> set[int]:
    """Pids of all living descendants of `pid` (default: this process)."""
    root = pid or os.getpid()
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))
    found: set[int] = set()
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def open_fds() -> dict[int, str]:
    out = {}
    for fd in os.listdir("/proc/self/fd"):
        try:
            out[int(fd)] = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            pass
    return out


def our_containers() -> set[str]:
    if not availability("docker")[0]:
        return set()
    from agentrl.sandboxes.docker_backend import LABEL_PID, docker_client

    client = docker_client()
    return {c.id for c in client.containers.list(all=True, filters={"label": f"{LABEL_PID}={os.getpid()}"})}


def temp_entries() -> set[str]:
    return {name for name in os.listdir(tempfile.gettempdir()) if "agentrl" in name}


def host_mounts() -> set[str]:
    with open("/proc/self/mountinfo") as f:
        points = {line.split()[4] for line in f}
    # Containers (ours and anyone else's on this machine) come and go under docker's dirs.
    return {p for p in points if not p.startswith(("/var/lib/docker", "/run/docker", "/var/run/docker"))}


class LeakSnapshot:
    """What this process holds; `assert_nothing_new` fails on anything a test left behind."""

    def __init__(self, socket_slack: int = 0) -> None:
        self.socket_slack = socket_slack
        # Containers first: the first listing connects the shared docker client, whose sockets
        # belong in the "before" picture (else a bwrap test run alone counts them as leaks).
        self.containers = our_containers()
        self.processes = descendants()
        self.fds = open_fds()
        self.temps = temp_entries()
        self.mounts = host_mounts()

    def assert_nothing_new(self, settle: float = 5.0) -> None:
        deadline = time.monotonic() + settle
        while True:
            new_processes = descendants() - self.processes
            new_containers = our_containers() - self.containers
            if not (new_processes or new_containers) or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert not new_processes, f"processes left behind: {sorted(new_processes)}"
        assert not new_containers, f"containers left behind: {sorted(new_containers)}"
        # Pipes, memfds and files must all be closed. The shared docker client keeps a bounded
        # pool of connections to the daemon (sockets), which is not a leak; test_leaks checks
        # that their number stays flat over many sandboxes.
        now = open_fds()
        new = {fd: target for fd, target in now.items() if self.fds.get(fd) != target}
        not_sockets = {fd: t for fd, t in new.items() if not t.startswith("socket:")}
        assert not not_sockets, f"file descriptors left open: {not_sockets}"
        assert len(new) <= self.socket_slack, f"sockets left open: {new}"
        assert temp_entries() <= self.temps, f"temp entries left behind: {temp_entries() - self.temps}"
        assert host_mounts() <= self.mounts, f"mounts left behind: {host_mounts() - self.mounts}"


@pytest.fixture
def make_sandbox(backend: str) -> Iterator[Callable[..., Sandbox]]:
    """A factory of started sandboxes with small limits (overridable); all are closed after
    the test, and then nothing of them may remain."""
    snapshot = LeakSnapshot(socket_slack=DOCKER_POOL_SOCKETS if backend == "docker" else 0)
    made: list[Sandbox] = []

    def factory(**limits: object) -> Sandbox:
        sandbox = create(backend, **{**SMALL, **limits})  # type: ignore[arg-type]
        made.append(sandbox)
        return sandbox

    yield factory
    for sandbox in made:
        sandbox.close()
    snapshot.assert_nothing_new()


@pytest.fixture
def sandbox(make_sandbox: Callable[..., Sandbox]) -> Sandbox:
    return make_sandbox()

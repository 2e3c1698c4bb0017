"""A `vllm serve` process agentrl samples from, and the weight sync that keeps it on-policy.

The `openai` backend samples from any OpenAI-compatible server. For training, the server must
receive the trainer's weights after every update: `generation: {backend: openai,
weight_sync: vllm}` does that for a vLLM server started the way `server_command` builds it:

- `--worker-extension-cls agentrl.generation.vllm_worker.WeightSyncExtension`: the method that
  loads a state dict into the engine's model (agentrl/generation/vllm_worker.py says why the
  CPU linear layers need it);
- `VLLM_SERVER_DEV_MODE=1`: vLLM's `POST /collective_rpc` and `POST /reset_prefix_cache`, the
  two calls a sync makes;
- `--logprobs-mode processed_logprobs`: log-probs after temperature, the trainer's convention;
- `--no-enable-chunked-prefill`: a seeded request whose prompt is split by chunked prefill
  crashes vLLM's CPU sampler.

A sync writes the weights as one safetensors file into `generation.sync_dir` (a directory the
server can read: a temporary one when both run on one host, a shared filesystem otherwise),
asks the server's workers to load it, then clears the server's prefix cache (its keys and
values belong to the old weights).

`VLLMServer` starts such a server as a child process and stops it (tests, benchmarks, and a
user who wants one command):

    with VLLMServer(model_dir, served_model_name="policy", port=8011) as server:
        print(server.base_url)   # http://127.0.0.1:8011/v1
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import deque
from pathlib import Path
from typing import Any

import httpx
import torch

from agentrl.generation.openai import OpenAIGenerator, ServerUnavailable
from agentrl.generation.vllm_worker import EXTENSION, LOAD_METHOD, write_weights_file

#: the extension method a sync check calls (it exists only when the extension is loaded)
CHECK_METHOD = "agentrl_weight_checksum"


def server_command(model_dir: str | Path, *, served_model_name: str, port: int, host: str = "127.0.0.1",
                   max_model_len: int = 1024, kv_cache_gb: float = 1.0, dtype: str = "float32",
                   python: str = sys.executable, extra_args: tuple[str, ...] = ()) -> list[str]:
    """The command line of a vLLM server that `weight_sync: vllm` can update (run it with
    `VLLM_SERVER_DEV_MODE=1` in its environment). `dtype`: the trainer's precision (vLLM's
    own default on a CPU is bfloat16, whose log-probs stray from a float32 trainer's)."""
    return [python, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
            "--served-model-name", served_model_name, "--host", host, "--port", str(port),
            "--dtype", dtype, "--max-model-len", str(max_model_len), "--kv-cache-memory-bytes", str(int(kv_cache_gb * 2**30)),
            "--worker-extension-cls", EXTENSION,
            "--logprobs-mode", "processed_logprobs", "--no-enable-chunked-prefill",
            "--enforce-eager", *extra_args]


class VLLMServer:
    """A `vllm serve` child process (see `server_command`), ready when `start()` returns.

    `start()` waits until `/v1/models` answers, at most `startup_timeout` seconds, and raises
    ServerUnavailable with the end of the server's log when the process exits first.
    """

    def __init__(self, model_dir: str | Path, *, served_model_name: str, port: int, host: str = "127.0.0.1",
                 max_model_len: int = 1024, python: str = sys.executable, kv_cache_gb: float = 1.0,
                 dtype: str = "float32", startup_timeout: float = 600.0, extra_args: tuple[str, ...] = ()) -> None:
        self.command = server_command(model_dir, served_model_name=served_model_name, port=port, host=host,
                                      max_model_len=max_model_len, kv_cache_gb=kv_cache_gb, dtype=dtype, python=python,
                                      extra_args=extra_args)
        self.base_url = f"http://{host}:{port}/v1"
        self.served_model_name = served_model_name
        self.startup_timeout = startup_timeout
        self.env = {**os.environ, "VLLM_SERVER_DEV_MODE": "1"}
        self.process: subprocess.Popen[str] | None = None
        self._log_file: Any = None

    def start(self) -> VLLMServer:
        self._log_file = tempfile.TemporaryFile(mode="w+")
        self.process = subprocess.Popen(self.command, env=self.env, stdout=self._log_file,
                                        stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + self.startup_timeout
        root = self.base_url[: -len("/v1")]
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerUnavailable(f"the vLLM server exited with code {self.process.returncode} "
                                        f"before answering:\n{self.log_tail()}")
            try:
                if httpx.get(root + "/v1/models", timeout=2.0).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(1.0)
        self.stop()
        raise ServerUnavailable(f"the vLLM server did not answer within {self.startup_timeout:.0f} s:\n"
                                f"{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        """The last lines the server wrote (for error messages)."""
        if self._log_file is None:
            return ""
        self._log_file.flush()
        self._log_file.seek(0)
        return "".join(deque(self._log_file, maxlen=lines))

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def __enter__(self) -> VLLMServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class ServerWeightSync:
    """`sync_weights(model)` for a vLLM server: safetensors file, `collective_rpc`, cache reset."""

    def __init__(self, root: str, *, sync_dir: str | None = None, timeout: float = 600.0) -> None:
        self.root = root
        self._own_dir = sync_dir is None
        self.sync_dir = Path(sync_dir) if sync_dir else Path(tempfile.mkdtemp(prefix="agentrl-weights-"))
        self.sync_dir.mkdir(parents=True, exist_ok=True)
        self._client = httpx.Client(timeout=timeout)

    def check(self) -> None:
        """Fail with one line unless the server can take weights (dev mode and the extension)."""
        try:
            response = self._client.post(self.root + "/collective_rpc", json={"method": CHECK_METHOD})
        except httpx.TransportError as exc:
            raise ServerUnavailable(f"No server answers at {self.root} ({exc!r})") from None
        if response.status_code == 404:
            raise ServerUnavailable(
                f"generation.weight_sync=vllm: the server at {self.root} has no /collective_rpc; start "
                "it with VLLM_SERVER_DEV_MODE=1 in its environment (docs/scale.md, section 2)")
        if response.status_code >= 400:
            raise ServerUnavailable(
                f"generation.weight_sync=vllm: the server at {self.root} cannot load weights (HTTP "
                f"{response.status_code}: {response.text[:200]}); start it with --worker-extension-cls "
                f"{EXTENSION} (docs/scale.md, section 2)")

    def __call__(self, model: torch.nn.Module) -> None:
        path, count = write_weights_file(model, self.sync_dir)
        response = self._client.post(self.root + "/collective_rpc",
                                     json={"method": LOAD_METHOD, "kwargs": {"path": str(path)}})
        if response.status_code >= 400:
            raise RuntimeError(f"the vLLM server at {self.root} failed to load the new weights (HTTP "
                               f"{response.status_code}): {response.text[:500]}")
        loaded = [int(n) for n in response.json().get("results", [])]
        if not loaded or any(n != count for n in loaded):
            raise RuntimeError(f"the vLLM server loaded {loaded} tensors of {count}: a partial update")
        reset = self._client.post(self.root + "/reset_prefix_cache", params={"reset_running_requests": "true"})
        if reset.status_code >= 400 or not reset.json().get("success", False):
            raise RuntimeError(f"the vLLM server at {self.root} could not clear its prefix cache after the "
                               f"weight sync: {reset.text[:200]}")

    def close(self) -> None:
        self._client.close()
        if self._own_dir:
            shutil.rmtree(self.sync_dir, ignore_errors=True)


def attach_server_weight_sync(generator: OpenAIGenerator, settings: Any) -> ServerWeightSync:
    """Give `generator` a `sync_weights(model)` that pushes weights to its vLLM server, after
    checking that the server can take them; the generator's `close()` also closes the sync."""
    root = generator.url[: -len("/v1/completions")]
    sync = ServerWeightSync(root, sync_dir=getattr(settings, "sync_dir", None),
                            timeout=getattr(settings, "timeout", 600.0))
    try:
        sync.check()
    except BaseException:
        sync.close()
        raise
    close = generator.close

    def close_both() -> None:
        sync.close()
        close()

    generator.sync_weights = sync  # type: ignore[attr-defined]
    generator.close = close_both  # type: ignore[method-assign]
    return sync


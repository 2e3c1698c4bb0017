"""The recipe chooses the generator; the trainer injects it and syncs its weights after updates."""

from __future__ import annotations

import copy
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

from agentrl.config import ConfigError, load_config
from agentrl.generation import (
    HFGenerator,
    ServerUnavailable,
    make_generator,
)
from agentrl.models import load_model
from agentrl.training import RLTrainer, read_metrics
from agentrl.training.run import run_training
from tests.foundation.test_training import Lowercase, _config


class OwnCopyGenerator(HFGenerator):
    """An HF sampler over its own copy of the policy, like an inference engine: it sees new
    weights only through `sync_weights`."""

    def __init__(self, model, tokenizer, *, sync: bool = True) -> None:
        super().__init__(copy.deepcopy(model).eval(), tokenizer, max_batch_size=128)
        self.syncs = 0
        if not sync:
            self.sync_weights = None  # type: ignore[assignment]  # an engine that never hears of updates

    def sync_weights(self, model: torch.nn.Module) -> None:  # noqa: D102 - the protocol's method
        self.model.load_state_dict(model.state_dict())
        self.syncs += 1


def _weights(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def _train(tmp_path, tiny_model_dir, name, generator_factory=None):
    config = _config(tmp_path, name, **{"train.iterations": 3, "train.lr": 1e-2})
    model, tokenizer = load_model(tiny_model_dir)
    generator = generator_factory(model, tokenizer) if generator_factory else None
    torch.manual_seed(0)
    trainer = RLTrainer(config, tmp_path / name, model, tokenizer, Lowercase, generator=generator)
    trainer.train()
    return trainer, generator


def test_the_default_backend_samples_from_the_module_the_trainer_updates(tiny_model_dir):
    model, tokenizer = load_model(tiny_model_dir)
    config = load_config(None, [])
    generator = make_generator(config.generation, model, tokenizer, max_batch_size=8, max_model_len=256)
    assert isinstance(generator, HFGenerator) and generator.model is model
    assert not hasattr(generator, "sync_weights")  # nothing to copy


def test_a_generator_with_its_own_weights_is_synced_after_every_update(tmp_path, tiny_model_dir):
    shared, _ = _train(tmp_path, tiny_model_dir, "shared")
    synced, generator = _train(tmp_path, tiny_model_dir, "synced", OwnCopyGenerator)
    # One sync per iteration, after its update: the engine samples what the trainer learned.
    assert generator.syncs == 3
    assert torch.equal(_weights(generator.model), _weights(synced.model))
    # Sampling from a synced copy is sampling from the trainer's module: the same run.
    assert torch.allclose(_weights(synced.model), _weights(shared.model), atol=1e-6)
    metrics = [m for m in read_metrics(tmp_path / "synced") if "perf/weight_sync_s" in m]
    assert len(metrics) == 3 and all(m["perf/weight_sync_s"] >= 0 for m in metrics)


def test_without_sync_the_copy_goes_stale_and_the_run_differs(tmp_path, tiny_model_dir):
    shared, _ = _train(tmp_path, tiny_model_dir, "shared")
    stale, generator = _train(tmp_path, tiny_model_dir, "stale",
                              lambda m, t: OwnCopyGenerator(m, t, sync=False))
    assert not torch.equal(_weights(generator.model), _weights(stale.model))
    assert not torch.allclose(_weights(stale.model), _weights(shared.model), atol=1e-6)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_server_that_does_not_answer_is_one_line_before_the_first_rollout(tiny_model_dir):
    model, tokenizer = load_model(tiny_model_dir)
    config = load_config(None, ["generation.backend=openai", f"generation.base_url=http://127.0.0.1:{_closed_port()}/v1",
                                "generation.model=policy"])
    with pytest.raises(ServerUnavailable, match="No OpenAI-compatible server answers at .* fix generation.base_url"):
        make_generator(config.generation, model, tokenizer, max_batch_size=8, max_model_len=256)


def test_training_refuses_a_server_that_never_gets_the_new_weights(tmp_path):
    config = load_config(None, [f"run.out_dir={tmp_path}", "generation.backend=openai",
                                "generation.base_url=http://127.0.0.1:1/v1", "generation.model=policy"])
    with pytest.raises(ConfigError, match="weight_sync=none: the server would keep sampling"):
        run_training(config)
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_unknown_backends_and_fields_name_themselves():
    with pytest.raises(ConfigError, match="generation: unknown backend 'tgi'; available: hf, vllm, openai"):
        load_config(None, ["generation=tgi"])
    with pytest.raises(ConfigError, match=r"generation.base_url: Field required"):
        load_config(None, ["generation.backend=openai", "generation.model=m"])
    with pytest.raises(ConfigError, match=r"generation.kv_cache: unknown field \(allowed: backend, max_model_len"):
        load_config(None, ["generation.backend=vllm", "generation.kv_cache=2"])


def test_a_server_without_dev_mode_cannot_take_weights_and_says_how_to_start_it(tmp_path):
    """generation.weight_sync=vllm against a loopback HTTP server that answers /v1/models but
    has no /collective_rpc (a vLLM server started without VLLM_SERVER_DEV_MODE=1)."""

    class Models(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            body = json.dumps({"data": [{"id": "policy"}]}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self):
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Models)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        config = load_config(None, ["generation.backend=openai", f"generation.base_url=http://127.0.0.1:{httpd.server_port}/v1",
                                    "generation.model=policy", "generation.weight_sync=vllm",
                                    "generation.check_tokenizer=false"])
        with pytest.raises(ServerUnavailable, match="no /collective_rpc; start it with VLLM_SERVER_DEV_MODE=1"):
            make_generator(config.generation, None, None, max_batch_size=4, max_model_len=256)
    finally:
        httpd.shutdown()

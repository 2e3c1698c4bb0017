"""`agentrl eval` over any backend: a checkpoint in this process, or an OpenAI-compatible server.

The server is real HTTP on loopback (ThreadingHTTPServer) in vLLM's response format, sampling
with the tiny model through HFGenerator: token ids in, token ids and log-probs out. The same
recipe, seeds and weights evaluated in-process and through the server give the same report.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from agentrl.cli import app
from agentrl.envs import register
from agentrl.envs.base import TextEnv, make_info
from agentrl.eval import pass_at_k
from agentrl.generation import HFGenerator
from agentrl.models import load_model
from agentrl.models.tiny import train_tokenizer
from agentrl.types import SamplingParams

SERVED_NAME = "tiny-policy"


class GuessEnv(TextEnv):
    """Say something; a turn solves the task when a hash of (task seed, turn, what was said) is
    0 mod 3.

    A random tiny model then solves some tasks at the first turn, some later and some never,
    so success, Succ@k, turns and pass@k all take values that a wrong evaluation would change.
    """

    max_turns = 3
    system_prompt = "Say something."

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self.task_seed, self.turn = seed, 0
        return f"Task {seed}: say something.", make_info(("start", seed))

    def step(self, action: str):
        self.turn += 1
        digest = hashlib.sha256(f"{self.task_seed}|{self.turn}|{action}".encode()).hexdigest()
        solved = int(digest, 16) % 3 == 0
        done = solved or self.turn >= self.max_turns
        info = make_info((self.task_seed, self.turn), success=solved, answer=action.strip())
        return ("Solved." if solved else "Try again."), float(solved), done, False, info


register("evaltest/Guess-v0", GuessEnv, "test env: say something, solved by a hash")


# --- an OpenAI-compatible server over the tiny model -----------------------------------------


class _TinyModelHandler(BaseHTTPRequestHandler):
    """`/v1/models`, `/tokenize` and `/v1/completions` as vLLM answers them, sampled by the
    server's HFGenerator one request at a time (a lock: the generator is not thread-safe).
    `top_logprobs` holds the sampled token's log-prob alone (the client reads no more here)."""

    server: "_TinyModelServer"

    def log_message(self, *args) -> None:  # keep test output quiet
        pass

    def do_GET(self) -> None:
        if self.path != "/v1/models":
            self._reply(404, {"error": f"no route {self.path}"})
            return
        self.server.requests.append(self.path)
        self._reply(200, {"object": "list", "data": [{"id": SERVED_NAME, "object": "model"}]})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.requests.append(self.path)
        if body.get("model") != SERVED_NAME:
            self._reply(404, {"error": {"message": f"model {body.get('model')} does not exist"}})
        elif self.path == "/tokenize":
            tokens = self.server.tokenizer(body["prompt"], add_special_tokens=body.get("add_special_tokens", True))
            self._reply(200, {"tokens": tokens["input_ids"], "count": len(tokens["input_ids"])})
        elif self.path == "/v1/completions":
            self._reply(200, {"id": "cmpl-test", "object": "text_completion", "choices": self._complete(body)})
        else:
            self._reply(404, {"error": f"no route {self.path}"})

    def _complete(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        prompts = body["prompt"]
        params = SamplingParams(temperature=body["temperature"], top_p=body["top_p"],
                                max_new_tokens=body["max_tokens"], stop=list(body.get("stop") or []))
        seeds = [body["seed"]] * len(prompts) if "seed" in body else None
        with self.server.lock:
            completions = self.server.generator.generate(prompts, params, seeds)
        choices = []
        for index, completion in enumerate(completions):
            ids = completion.token_ids
            choices.append({
                "index": index,
                "text": completion.text,
                "logprobs": {"tokens": [f"token_id:{t}" for t in ids],
                             "token_logprobs": completion.logprobs,
                             "top_logprobs": [{f"token_id:{t}": lp} for t, lp in zip(ids, completion.logprobs)]},
                # vLLM: an EOS stop is "stop" with no stop_reason; a stop string is its stop_reason
                "finish_reason": "length" if completion.finish_reason == "length" else "stop",
                "stop_reason": completion.stop_string,
            })
        return choices

    def _reply(self, status: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class _TinyModelServer(ThreadingHTTPServer):
    def __init__(self, generator: HFGenerator, tokenizer: Any) -> None:
        super().__init__(("127.0.0.1", 0), _TinyModelHandler)
        self.generator, self.tokenizer = generator, tokenizer
        self.lock = threading.Lock()
        self.requests: list[str] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


def _serve(generator: HFGenerator, tokenizer: Any):
    server = _TinyModelServer(generator, tokenizer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=30)


@pytest.fixture(scope="module")
def policy(tiny_model_dir):
    return load_model(tiny_model_dir)


@pytest.fixture()
def server(policy):
    model, tokenizer = policy
    yield from _serve(HFGenerator(model, tokenizer, max_batch_size=8), tokenizer)


# --- running the command ---------------------------------------------------------------------


def _eval(tmp_path: Path, *args: str) -> Any:
    """`agentrl eval` in this process (typer's runner) on GuessEnv with a small budget."""
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("run: {name: eval, retain_freed_memory: false}\n"
                      "env: {id: evaltest/Guess-v0}\n"
                      "rollout: {max_new_tokens: 6, max_total_tokens: 256}\n"
                      "eval: {tasks: 6, seed_offset: 100}\n")
    return CliRunner().invoke(app, ["eval", str(recipe), f"run.out_dir={tmp_path}", *args])


def _openai(server_url: str) -> str:
    return f"generation={{backend: openai, base_url: '{server_url}', model: {SERVED_NAME}}}"


def _one_error_line(result) -> str:
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    return lines[0]


def _report(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


@pytest.mark.parametrize("temperature, samples", [(0.0, 2), (1.0, 3)], ids=["greedy", "sampled"])
def test_a_server_and_the_checkpoint_in_process_give_the_same_report(tmp_path, tiny_model_dir, server,
                                                                     temperature, samples):
    """Greedy, both must agree exactly; sampled, too, since every turn sends its own seed and
    the server's sampler draws the same noise from it as the in-process one."""
    settings = (f"eval.temperature={temperature}", f"eval.samples={samples}", "eval.pass_k=[1,2]")
    local = _eval(tmp_path, *settings, "--model", str(tiny_model_dir), "--report", str(tmp_path / "local.json"))
    assert local.exit_code == 0, (local.output, local.exception)
    served = _eval(tmp_path, *settings, _openai(server.url), "--tokenizer", str(tiny_model_dir),
                   "--report", str(tmp_path / "served.json"))
    assert served.exit_code == 0, (served.output, served.exception)
    episodes = 6 * samples
    assert server.requests.count("/v1/completions") >= episodes  # every turn went over HTTP
    assert "/tokenize" in server.requests  # the tokenizers were compared first

    ours, theirs = _report(tmp_path / "local.json"), _report(tmp_path / "served.json")
    for report in (ours, theirs):
        report["metrics"].pop("seconds")
    assert ours["metrics"] == theirs["metrics"]
    # Episode for episode: the same turns, token counts, finish reasons and outcomes.
    assert ours["trajectories"] == theirs["trajectories"]
    assert theirs["generation"]["backend"] == "openai" and theirs["model"] is None
    assert ours["generation"]["backend"] == "hf" and ours["model"] == str(tiny_model_dir)

    metrics = ours["metrics"]
    assert (metrics["tasks"], metrics["samples"], metrics["episodes"]) == (6, samples, episodes)
    assert 0.0 < metrics["success"] < 1.0  # the env's hash solves some episodes and not others
    assert metrics["pass@1"] == pytest.approx(metrics["success"])  # every task has all its samples
    if temperature == 0.0:
        # Greedy samples of one task are the same episode: pass@k is the success rate for every k.
        assert metrics["pass@2"] == metrics["pass@1"]
    for key in ("pass@1", "pass@2", "Succ@1", "Succ@5", "AvgTurns", "unique-answer ratio"):
        assert key in served.stdout, (key, served.stdout)
    assert f"Report: {tmp_path / 'served.json'}" in served.stdout


def test_pass_at_k_of_sampled_episodes_matches_the_estimator_per_task(tmp_path, tiny_model_dir, server):
    """At temperature 1 through the server: the samples of a task differ (each draws its own
    noise) and the report's pass@k is the estimator averaged over the tasks' outcomes."""
    checkpoint = tmp_path / "checkpoint"
    shutil.copytree(tiny_model_dir, checkpoint)
    result = _eval(tmp_path, "eval.samples=4", "eval.pass_k=[1,2,4]", _openai(server.url),
                   "--model", str(checkpoint))
    assert result.exit_code == 0, (result.output, result.exception)
    report = _report(checkpoint / "eval" / "held_out.json")  # beside --model when no --report is given
    by_task: dict[int, list[dict]] = {}
    for trajectory in report["trajectories"]:
        by_task.setdefault(trajectory["group_id"], []).append(trajectory)
    assert len(by_task) == 6 and all(len(group) == 4 for group in by_task.values())
    assert any(len({json.dumps(t["messages"]) for t in group}) > 1 for group in by_task.values())
    metrics = report["metrics"]
    for k in (1, 2, 4):
        expected = sum(pass_at_k(4, sum(t["success"] for t in group), k) for group in by_task.values()) / 6
        assert metrics[f"pass@{k}"] == pytest.approx(expected, abs=1e-12)
    assert metrics["pass@1"] == pytest.approx(metrics["success"])
    assert metrics["pass@1"] <= metrics["pass@2"] <= metrics["pass@4"]
    assert metrics["tasks_short"] == 0 and "pass@4_tasks" not in metrics


@pytest.fixture()
def other_tokenizer_server(policy, tiny_model_texts):
    """A server whose model splits text differently (a tokenizer trained on other text)."""
    model, tokenizer = policy
    other = train_tokenizer([text.upper() for text in tiny_model_texts], vocab_size=320)
    yield from _serve(HFGenerator(model, tokenizer), other)


def test_a_server_with_another_tokenizer_is_one_line(tmp_path, tiny_model_dir, other_tokenizer_server):
    result = _eval(tmp_path, _openai(other_tokenizer_server.url), "--tokenizer", str(tiny_model_dir))
    line = _one_error_line(result)
    assert "tokenizes text differently" in line and "check_tokenizer" in line, line
    assert "/v1/completions" not in other_tokenizer_server.requests  # refused before any rollout


def test_no_server_is_one_line(tmp_path, tiny_model_dir):
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = _eval(tmp_path, _openai(f"http://127.0.0.1:{port}/v1"), "--tokenizer", str(tiny_model_dir))
    line = _one_error_line(result)
    assert f"No OpenAI-compatible server answers at http://127.0.0.1:{port}" in line, line


def test_what_to_sample_from_must_be_named(tmp_path, tiny_model_dir):
    no_tokenizer = _one_error_line(_eval(tmp_path, _openai("http://127.0.0.1:9/v1")))
    assert "--tokenizer DIR" in no_tokenizer, no_tokenizer
    no_model = _one_error_line(_eval(tmp_path))
    assert "pass --model DIR" in no_model, no_model
    not_a_tokenizer = _one_error_line(_eval(tmp_path, _openai("http://127.0.0.1:9/v1"), "--tokenizer",
                                            str(tmp_path)))
    assert "No tokenizer at" in not_a_tokenizer, not_a_tokenizer


def test_more_pass_k_than_samples_is_one_line(tmp_path, tiny_model_dir):
    line = _one_error_line(_eval(tmp_path, "eval.samples=2", "eval.pass_k=[1,5]", "--model", str(tiny_model_dir)))
    assert "pass@5" in line and "eval.samples=5" in line, line

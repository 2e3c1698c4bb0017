"""ToolEnv: parsing to observations, budgets, timeouts, caching, forking, check_env."""

from __future__ import annotations

import asyncio
import threading
import time

import pydantic
import pytest
from gymnasium.utils.env_checker import check_env

import agentrl.envs  # noqa: F401  (registers the envs)
from agentrl.envs import make_env
from agentrl.envs.tasks.qa_reward import exact_match, normalize_answer, qa_reward, token_f1
from agentrl.envs.tool_env import Episode, Score, Task, ToolEnv
from agentrl.rollout import ChainStrategy, RolloutEngine
from agentrl.tools.base import Tool, ToolResult
from agentrl.types import Completion, SamplingParams


class Sleep(Tool):
    """Sleeps for the given seconds (a real wait on the event loop), then reports it."""

    name = "sleep"
    description = "Wait a number of seconds."
    primary_arg = "seconds"

    class Args(pydantic.BaseModel):
        seconds: float

    async def call(self, args):
        await asyncio.sleep(args.seconds)
        return ToolResult(f"slept {args.seconds:g}")


class Broken(Tool):
    name = "broken"
    description = "Always raises."
    primary_arg = "x"

    class Args(pydantic.BaseModel):
        x: str

    async def call(self, args):
        raise RuntimeError("tool bug")


class Counter(Tool):
    """A stateful tool: adds to a running total (checks fork copies state)."""

    name = "add"
    description = "Add a number to the total."
    primary_arg = "n"
    stateful = True

    class Args(pydantic.BaseModel):
        n: int

    def __init__(self):
        self.total = 0

    async def call(self, args):
        self.total += args.n
        return ToolResult(f"total {self.total}")

    def fork(self, memo=None):
        twin = Counter()
        twin.total = self.total
        return twin

    def reset(self):
        self.total = 0


def _env(cls: type[ToolEnv] = ToolEnv, **kwargs) -> ToolEnv:
    defaults = dict(
        tools=[Sleep(), Broken(), Counter()],
        tasks=[Task("Say 42.", answer="42")],
        reward_fn=lambda task, ep: float(ep.answer == task.answer),
        max_turns=3,
        call_timeout=0.5,
    )
    defaults.update(kwargs)
    return cls(**defaults)


def test_answer_terminates_with_reward():
    env = _env()
    obs, info = env.reset(seed=0)
    assert obs == "Say 42." and info["anchor"] == "Say 42." and info["action_valid"]
    obs, reward, terminated, truncated, info = env.step("<answer>42</answer>")
    assert (reward, terminated, truncated, info["success"]) == (1.0, True, False, True)
    with pytest.raises(RuntimeError, match="after the episode ended"):
        env.step("<answer>42</answer>")


def test_invalid_action_is_an_observation_and_counted():
    env = _env()
    env.reset(seed=0)
    obs, reward, terminated, truncated, info = env.step("hello")
    assert obs.startswith("Invalid action: no tool call and no answer.")
    assert not info["action_valid"] and info["invalid/no_action"] == 1 and info["invalid_kind"] == "no_action"
    assert info["anchor"] == obs and not terminated and not truncated


def test_turn_limit_truncates_and_scores_unanswered():
    env = _env(max_turns=2)
    env.reset(seed=0)
    env.step("<add>1</add>")
    _, reward, terminated, truncated, info = env.step("<add>2</add>")
    assert truncated and not terminated and reward == 0.0 and not info["success"]


def test_tools_run_concurrently_and_time_out_as_results():
    env = _env(max_calls_per_turn=3)
    env.reset(seed=0)
    start = time.perf_counter()
    obs, *_ , info = env.step("<sleep>0.3</sleep><broken>x</broken><add>5</add>")
    assert time.perf_counter() - start < 0.45  # the three tools ran at the same time
    assert obs == (
        "<result>\nslept 0.3\n</result>\n<result>\nError: the broken tool failed (RuntimeError).\n</result>\n"
        "<result>\ntotal 5\n</result>"
    )
    assert [c["status"] for c in info["tool_calls"]] == ["ok", "infra_error", "ok"]
    assert info["tools/infra_errors"] == 1 and info["tools/errors"] == 0
    obs, *_, info = env.step("<sleep>2</sleep>")
    assert obs == "<result>\nError: the sleep call timed out after 0.5 s.\n</result>"
    assert info["tools/timeouts"] == 1 and info["tool_calls"][0]["status"] == "timeout"


def test_stateful_calls_run_in_order_and_budget_is_enforced():
    env = _env(max_tool_calls=3, max_turns=5)
    env.reset(seed=0)
    obs, *_ = env.step("<add>1</add><add>2</add>")
    assert obs == "<result>\ntotal 1\n</result>\n<result>\ntotal 3\n</result>"
    obs, *_, info = env.step("<add>1</add><add>1</add>")
    assert obs == "Tool-call budget spent (3 calls per episode). Answer now with <answer>...</answer>."
    assert info["invalid/tool_budget"] == 1 and not info["action_valid"]


def test_identical_stateless_calls_are_answered_from_the_group_cache():
    env = make_env("agentrl/SearchQA-v0")
    env.reset(seed=3)
    first = env.step("<search>Lumeva</search>")[0]
    branch = env.fork()
    obs, *_, info = branch.step("<search>Lumeva</search>")
    assert obs == first and info["tools/cache_hits"] == 1
    other = make_env("agentrl/SearchQA-v0")
    other.reset(seed=3, options={"tool_cache": env.tool_cache})  # same group: same cache
    assert other.step("<search>Lumeva</search>")[-1]["tools/cache_hits"] == 1


def test_fork_is_independent():
    env = _env(max_turns=5)
    env.reset(seed=0)
    env.step("<add>2</add>")
    twin = env.fork()
    assert twin.step("<add>3</add>")[0] == "<result>\ntotal 5\n</result>"
    assert env.step("<add>1</add>")[0] == "<result>\ntotal 3\n</result>"
    assert twin.episode.turns == 2 and env.episode.turns == 2 and twin.tools["sleep"] is env.tools["sleep"]


def test_step_works_inside_a_running_event_loop_and_astep():
    env = _env()

    async def drive():
        env.reset(seed=0)
        blocking = env.step("<add>1</add>")[0]        # step from a thread running a loop
        awaited = (await env.astep("<add>1</add>"))[0]  # or await it on the caller's loop
        return blocking, awaited

    assert asyncio.run(drive()) == ("<result>\ntotal 1\n</result>", "<result>\ntotal 2\n</result>")


def test_random_text_actions_never_raise():
    env = make_env("agentrl/SearchQA-v0")
    env.reset(seed=0)
    env.action_space.seed(0)
    for _ in range(4):
        obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
        assert not info["action_valid"] and obs.startswith("Invalid action")
        if terminated or truncated:
            break


@pytest.mark.parametrize("call_format", ["xml", "hermes"])
def test_search_qa_passes_check_env_and_oracle_solves_it(call_format):
    env = make_env("agentrl/SearchQA-v0", call_format=call_format)
    check_env(env, skip_render_check=True)
    for index in range(len(env.tasks)):
        env.reset(seed=0, options={"task_index": index})
        done = False
        while not done:
            _, reward, terminated, truncated, info = env.step(env.oracle_action())
            done = terminated or truncated
        assert info["success"] and reward == 1.0, env.episode.task


def test_search_qa_world_prompts_are_short():
    env = make_env("agentrl/SearchQA-v0", max_hops=3, min_hops=3)
    obs, _ = env.reset(seed=1)
    first = env.step(env.oracle_action())[0]
    words = len((env.system_prompt + obs + first).split())
    assert words < 150, words  # < 400 tokens even for a small byte-level BPE


def test_qa_reward_modes():
    task = Task("q", answer=["The Lumeva River"])
    def ep(answer, invalid=0, tools=()):
        e = Episode(task=task, answer=answer, answered=answer is not None)
        e.invalid["no_action"] = invalid
        for t in tools:
            e.tool_calls[t] += 1
        return e
    assert normalize_answer("  The Lumeva,  river!") == "lumeva river"
    assert exact_match("lumeva river", task.answer) and token_f1("Lumeva", task.answer) == pytest.approx(2 / 3)
    assert qa_reward("em")(task, ep("lumeva river")) == Score(1.0, True)
    assert qa_reward("f1")(task, ep("Lumeva")).reward == pytest.approx(2 / 3)
    arpo = qa_reward("arpo")
    assert arpo(task, ep(None)).reward == -1.0
    assert arpo(task, ep("lumeva river", invalid=1)).reward == -1.0
    assert arpo(task, ep("Oskaria")).reward == 0.0
    assert arpo(task, ep("lumeva river", tools=("search", "python"))).reward == pytest.approx(1.1)
    with pytest.raises(ValueError, match="unknown QA reward mode"):
        qa_reward("bleu")


# --- stepped by the rollout engine ------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from agentrl.models import load_model

    return load_model(tiny_model_dir)[1]


def _writes(tokenizer, text_of):
    """A rollout policy that writes `text_of(episode)` as each episode's action."""
    def act(episodes, params):
        completions = []
        for episode in episodes:
            text = text_of(episode)
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            completions.append(Completion(ids, [0.0] * len(ids), "stop", text))
        return completions
    return act


def test_the_engine_steps_tool_envs_on_the_event_loop_and_keeps_an_overridden_step(tokenizer, monkeypatch):
    """The rollout engine steps ToolEnvs together through `astep` on the tools' event loop,
    without a hand-off per env (ToolEnv.step's own `run_sync`); a subclass that overrides
    `step` alone still has its own `step` called (in the thread pool)."""
    import agentrl.envs.tool_env as tool_env_module

    seen: list[tuple[str, str]] = []
    real_run_sync = tool_env_module.run_sync

    def counting_run_sync(coro):
        seen.append(("run_sync", threading.current_thread().name))
        return real_run_sync(coro)

    monkeypatch.setattr(tool_env_module, "run_sync", counting_run_sync)

    class Recording(ToolEnv):
        async def astep(self, action):
            seen.append(("astep", threading.current_thread().name))
            return await super().astep(action)

    class OwnStep(ToolEnv):
        def step(self, action):
            seen.append(("step", threading.current_thread().name))
            return super().step(action)

    add_then_answer = _writes(tokenizer, lambda episode: f"<add>{episode.traj_id + 1}</add>"
                              if episode.turns == 0 else "<answer>42</answer>")
    for cls in (Recording, OwnStep):
        with RolloutEngine(None, tokenizer, SamplingParams(), env_workers=2) as engine:
            groups = engine.run(lambda: _env(cls), [{"seed": 0}], ChainStrategy(3), policy=add_then_answer)
        observations = sorted(t.steps[0].observation for t in groups[0].trajectories)
        assert observations == [f"<result>\ntotal {n}\n</result>" for n in (1, 2, 3)]
        assert all(t.success for t in groups[0].trajectories)
    kinds = [kind for kind, _ in seen]
    assert kinds[:6] == ["astep"] * 6  # Recording: no per-env run_sync
    assert sorted(kinds[6:]) == ["run_sync"] * 6 + ["step"] * 6  # OwnStep: its step, then ToolEnv's
    assert {thread for kind, thread in seen if kind == "astep"} == {"agentrl-tools-loop"}
    assert all(thread.startswith("agentrl-env") for kind, thread in seen if kind == "step")


def test_a_crashing_astep_ends_that_episode_not_the_batch(tokenizer):
    class Exploding(ToolEnv):
        async def astep(self, action):
            if "boom" in action:
                raise ValueError("boom")
            return await super().astep(action)

    boom_or_answer = _writes(tokenizer, lambda episode: "<add>boom</add>" if episode.traj_id == 0
                             else "<answer>42</answer>")
    with RolloutEngine(None, tokenizer, SamplingParams()) as engine:
        groups = engine.run(lambda: _env(Exploding), [{"seed": 0}], ChainStrategy(2), policy=boom_or_answer)
    # The crash is the infrastructure's: marked, and replaced by a fresh rollout of the task.
    crashed, fine, replacement = groups[0].trajectories
    assert crashed.infra_error == "Environment error: ValueError: boom"
    assert crashed.info["truncated"] and not crashed.steps[0].action_valid
    assert fine.success and replacement.success and replacement.traj_id == 2
    assert not fine.infra_error and not replacement.infra_error
    assert groups[0].budget["infra_errors"] == 1


def test_a_tool_infrastructure_failure_ends_the_episode_as_infra_error(tokenizer):
    """A tool that raises (a server still down after its retries) is not the policy's fault:
    the step says so in `info["infra_error"]`, and the engine ends and marks the episode."""
    env = _env()
    env.reset(seed=0)
    *_, info = env.step("<broken>x</broken>")
    assert info["infra_error"].startswith("broken: tool bug") and info["tools/infra_errors"] == 1
    *_, info = env.step("<add>1</add>")
    assert "infra_error" not in info

    broken_then_answer = _writes(tokenizer, lambda episode: "<broken>x</broken>" if episode.traj_id == 0
                                 else "<answer>42</answer>")
    with RolloutEngine(None, tokenizer, SamplingParams()) as engine:
        groups = engine.run(_env, [{"seed": 0}], ChainStrategy(2), policy=broken_then_answer)
    crashed, *others = groups[0].trajectories
    assert crashed.num_turns == 1 and crashed.infra_error.startswith("broken: tool bug")
    assert len(others) == 2 and all(t.success and not t.infra_error for t in others)


class CountingSearch(Tool):
    """A stateless tool that counts how often it really runs."""

    name = "lookup"
    description = "Look a word up."
    primary_arg = "word"
    runs = 0

    class Args(pydantic.BaseModel):
        word: str

    async def call(self, args):
        type(self).runs += 1
        return ToolResult(f"{args.word} means {args.word[::-1]}")


def test_the_engine_shares_one_tool_cache_per_group(tokenizer):
    """A group's identical stateless calls run once; the rest are cache hits. Groups do not
    share a cache."""
    CountingSearch.runs = 0
    lookup_then_answer = _writes(tokenizer, lambda episode: "<lookup>sun</lookup>" if episode.turns == 0
                                 else "<answer>42</answer>")
    make = lambda: _env(tools=[CountingSearch()])  # noqa: E731
    with RolloutEngine(None, tokenizer, SamplingParams()) as engine:
        groups = engine.run(make, [{"seed": 0}, {"seed": 1}], ChainStrategy(4), policy=lookup_then_answer)
    assert CountingSearch.runs == 2  # once per group
    hits = [t.info["tools/cache_hits"] for g in groups for t in g.trajectories]
    assert sum(hits) == 6
    assert all(t.info["tools/lookup/calls"] == 1 and t.info["tools/lookup/seconds"] >= 0
               for g in groups for t in g.trajectories)
    # ... and the iteration's metrics (metrics.jsonl) carry every tool counter.
    from agentrl.training import RLTrainer

    metrics = RLTrainer._rollout_metrics(None, groups, rollout_time=1.0)
    assert metrics["tools/cache_hits"] == 6 and metrics["tools/lookup/calls"] == 8
    assert metrics["tools/errors"] == metrics["tools/timeouts"] == metrics["tools/infra_errors"] == 0
    assert metrics["tools/lookup/latency_s"] >= 0 and metrics["rollout/infra_errors"] == 0


def test_try_again_over_a_sandboxed_env_gives_every_sandbox_back(sandbox_backend):
    """TryAgain answers each turn on a fork of the task; a fork that ran python holds a sandbox,
    and each must be given back when its turn ends, not when the run ends."""
    from agentrl.envs.tasks.calc import Calc
    from agentrl.envs.wrappers import TryAgain
    from agentrl.sandboxes import SandboxPool

    turns = 3
    # One sandbox per turn: a leak shows as sandboxes still checked out, never as a wait.
    with SandboxPool(size=turns, backend=sandbox_backend, memory_mb=128, pids=32) as pool:
        env = TryAgain(Calc(pool=pool), max_turns=turns)
        for seed in range(2):
            env.reset(seed=seed)
            for _ in range(turns):
                *_, info = env.step("<python>print(6 * 7)</python>")
                assert info["tool_calls"][0]["status"] == "ok"  # it really ran in a sandbox
                assert pool.stats()["sandbox/pool_in_use"] == 0
        env.close()
        assert pool.stats()["sandbox/pool_in_use"] == 0


def test_try_again_over_a_sandboxed_env_forks_through_the_env(sandbox_backend):
    """A deep copy cannot copy a sandbox pool; TryAgain forks the env it wraps instead."""
    from agentrl.envs.tasks.calc import Calc
    from agentrl.envs.wrappers import TryAgain
    from agentrl.sandboxes import SandboxPool

    with SandboxPool(size=2, backend=sandbox_backend, memory_mb=128, pids=32) as pool:
        env = TryAgain(Calc(pool=pool), max_turns=3)
        env.reset(seed=0)
        env.step("<answer>1</answer>")
        twin = env.fork()
        assert twin.step("<python>print(2)</python>")[-1]["answers"] == ["1"]
        twin.close()
        *_, info = env.step("<answer>3</answer>")  # the original is untouched by its twin
        assert info["turn"] == 2 and info["answers"] == ["1", "3"]
        assert info["tool_calls"] == [] and pool.stats()["sandbox/pool_in_use"] == 0
        env.close()

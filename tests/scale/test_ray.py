"""Env and sandbox workers as Ray actors (agentrl.envs.remote), on a real local Ray instance.

- The rollout engine gives the same trajectories, token for token, with envs in Ray workers as
  with local envs: tool-free multi-turn arithmetic (chains and trees, whose branches fork envs
  in their worker) and Code-v0, whose python calls and grading run in the workers' sandbox pools.
- A worker killed in the middle of a rollout: its episodes are infrastructure failures, replaced
  by fresh episodes on a new worker (which starts like the first ones). A worker Ray cannot
  place is an error after the start timeout, never a wait without end.
- `agentrl train` with `ray.enabled` runs its envs in the workers and stops them at the end.
"""

from __future__ import annotations

import time
from dataclasses import replace
from functools import partial

import pytest

ray = pytest.importorskip("ray")

from agentrl.config import load_config  # noqa: E402
from agentrl.envs import EnvForkError, make_env  # noqa: E402
from agentrl.envs.remote import (  # noqa: E402
    EnvWorkerGroup,
    EnvWorkerLost,
    RemoteEnv,
    SandboxSettings,
    WorkerStartTimeout,
)
from agentrl.generation import HFGenerator  # noqa: E402
from agentrl.models import load_model  # noqa: E402
from agentrl.rollout import ChainStrategy, RolloutEngine  # noqa: E402
from agentrl.rollout.tree_strategy import TreeStrategy  # noqa: E402
from agentrl.types import Completion, SamplingParams  # noqa: E402

ARITHMETIC = ("agentrl/ArithmeticTryAgain-v0", {"digits": 2, "max_turns": 3})


@pytest.fixture(scope="module")
def local_ray():
    """One small local Ray instance for the module (8 logical CPUs, a 150 MB object store).

    Ray's CPUs are a count it schedules by, not cores: the module's `workers` (2 workers of 1
    CPU) live as long as the module, and a test starts a group of 2 more beside them (plus a
    replacement), so the instance must count at least 5; with 2, the second group's workers
    could never be placed."""
    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=8, include_dashboard=False, object_store_memory=150 * 2**20,
             logging_level="WARNING")
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def model_and_tokenizer(tiny_model_dir):
    return load_model(tiny_model_dir)


@pytest.fixture(scope="module")
def workers(local_ray):
    with EnvWorkerGroup(2) as group:
        yield group


@pytest.fixture(scope="module")
def sandbox_kind(sandbox_missing) -> str:
    """bwrap when it runs here (the faster start), else docker; skips without either."""
    from agentrl.sandboxes.backends import bwrap_ready, docker_ready

    for name, ready in (("bwrap", bwrap_ready), ("docker", docker_ready)):
        if ready()[0]:
            return name
    sandbox_missing("neither bwrap nor docker can run sandboxes here")


def _rollout(model_and_tokenizer, make, strategy, tasks=4, policy=None):
    model, tokenizer = model_and_tokenizer
    generator = HFGenerator(model, tokenizer, max_batch_size=32)
    sampling = SamplingParams(temperature=1.0, max_new_tokens=10, seed=11)
    with RolloutEngine(generator, tokenizer, sampling, env_workers=4) as engine:
        return engine.run(make, [{"seed": 100 + s} for s in range(tasks)], strategy, policy=policy)


def _comparable(groups):
    """Everything a trajectory is trained on or judged by."""
    return [[(t.traj_id, t.token_ids, t.loss_mask, [round(x, 5) for x in t.logprobs], t.reward,
              t.success, [s.observation for s in t.steps], t.node_path, bool(t.infra_error))
             for t in g.trajectories] for g in groups]


# --- the proxy --------------------------------------------------------------------------------


def test_a_remote_env_answers_like_the_local_one(workers):
    env_id, kwargs = ARITHMETIC
    local, remote = make_env(env_id, **kwargs), workers.make_env(env_id, kwargs)
    try:
        assert isinstance(remote, RemoteEnv) and remote.spec.id == env_id
        for name in ("system_prompt", "stop_strings", "tool_specs", "observation_role", "max_turns"):
            assert getattr(remote, name) == getattr(local, name), name
        assert remote.reset(seed=5) == local.reset(seed=5)
        assert remote.oracle_action() == local.oracle_action()
        assert remote.step("<answer>-1</answer>") == local.step("<answer>-1</answer>")
        twin, local_twin = remote.fork(), local.fork()  # the fork lives in the same worker
        assert twin.worker_slot == remote.worker_slot
        assert twin.step("<answer>0</answer>") == local_twin.step("<answer>0</answer>")
        assert remote.step("<answer>1</answer>") == local.step("<answer>1</answer>")  # untouched
        with pytest.raises(AttributeError):
            remote.no_such_attribute  # noqa: B018 - looked up in the worker, not found there
        twin.close()
    finally:
        remote.close()
        remote.close()  # closing twice is harmless
    assert workers.open_envs() == [0, 0]
    # Closes are not waited for; the workers drop the envs soon after.
    _eventually(lambda: [ray.get(actor.open_envs.remote()) for actor in workers.actors()] == [0, 0])


def _eventually(condition, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the condition did not hold in time"
        time.sleep(0.05)


def test_the_envs_exception_comes_back_with_its_class(workers):
    remote = workers.make_env("agentrl/SearchQA-v0", {})
    try:
        with pytest.raises(RuntimeError, match="before reset"):
            remote.step("<answer>x</answer>")
    finally:
        remote.close()
    with pytest.raises(Exception, match="unknown env id"):
        workers.factory("agentrl/NoSuchEnv-v0", {})


# --- the same rollouts, local and remote ---------------------------------------------------------


@pytest.mark.parametrize("strategy", [lambda: ChainStrategy(3), lambda: TreeStrategy(m=1, n=2, l=1)],
                         ids=["chain", "tree"])
def test_a_rollout_over_ray_workers_equals_the_local_rollout_token_for_token(model_and_tokenizer, workers,
                                                                           strategy):
    env_id, kwargs = ARITHMETIC
    local = _rollout(model_and_tokenizer, lambda: make_env(env_id, **kwargs), strategy())
    remote = _rollout(model_and_tokenizer, workers.factory(env_id, kwargs), strategy())
    assert _comparable(remote) == _comparable(local)
    trajectories = [t for g in remote for t in g.trajectories]
    assert any(t.num_turns > 1 for t in trajectories) and not any(t.infra_error for t in trajectories)
    assert workers.open_envs() == [0, 0]  # every env (and fork) closed by the engine


def _oracle_then_sampled(generator):
    """Code-v0's oracle python call first (run in a sandbox), then the tiny model's turns; the
    first rollout of each task plays the whole oracle (graded in a sandbox, reward 1)."""

    def act(episodes, params):
        scripted = [e for e in episodes if e.turns == 0 or e.traj_id == 0]
        sampled = [e for e in episodes if e not in scripted]
        out = {}
        for episode in scripted:
            text = episode.env.oracle_action()  # forwarded to the worker for a RemoteEnv
            ids = generator.tokenizer(text, add_special_tokens=False)["input_ids"]
            out[id(episode)] = Completion(ids, [0.0] * len(ids), "stop", text)
        if sampled:
            stops = list(sampled[0].env.stop_strings)
            seeds = [1000 * e.group_id + 10 * e.traj_id + e.turns for e in sampled]
            completions = generator.generate([e.token_ids for e in sampled],
                                             SamplingParams(temperature=1.0, max_new_tokens=10, stop=stops),
                                             seeds)
            out.update({id(e): c for e, c in zip(sampled, completions)})
        return [out[id(e)] for e in episodes]

    return act


def test_code_rollouts_with_sandbox_pools_in_the_workers_equal_local_ones(model_and_tokenizer, local_ray,
                                                                          sandbox_kind):
    from agentrl.sandboxes import SandboxPool

    model, tokenizer = model_and_tokenizer
    generator = HFGenerator(model, tokenizer, max_batch_size=8)
    kwargs = {"max_turns": 3, "code_timeout": 20.0, "call_timeout": 60.0}
    act = _oracle_then_sampled(generator)
    with SandboxPool(6, sandbox_kind) as pool:
        local = _rollout(model_and_tokenizer, lambda: make_env("agentrl/Code-v0", pool=pool, **kwargs),
                         ChainStrategy(2), tasks=2, policy=act)
    with EnvWorkerGroup(2, sandbox=SandboxSettings(6, sandbox_kind)) as group:
        assert [info["pool_size"] for info in group.info] == [6, 6]
        remote = _rollout(model_and_tokenizer, group.factory("agentrl/Code-v0", kwargs),
                          ChainStrategy(2), tasks=2, policy=act)
    assert _comparable(remote) == _comparable(local)
    trajectories = [t for g in remote for t in g.trajectories]
    assert not any(t.infra_error for t in trajectories)
    # The python call ran in a sandbox: its printout is the example's expected value.
    assert all("<result>" in t.steps[0].observation and "rror" not in t.steps[0].observation
               for t in trajectories)
    assert [t.reward for g in remote for t in g.trajectories if t.traj_id == 0] == [1.0, 1.0]


# --- a worker that dies ------------------------------------------------------------------------


def test_a_killed_worker_fails_its_episodes_as_infrastructure_and_they_are_replaced(model_and_tokenizer,
                                                                                   local_ray):
    model, tokenizer = model_and_tokenizer
    generator = HFGenerator(model, tokenizer, max_batch_size=32)
    env_id, kwargs = ARITHMETIC
    killed: dict[str, object] = {}

    with EnvWorkerGroup(2) as group:
        def kill_then_generate(episodes, params):
            """In the second round, before the envs step: the worker of slot 0 dies."""
            if not killed and any(e.turns == 1 for e in episodes):
                victim = group.actors()[0]
                killed["actor"] = victim
                killed["episodes"] = {(e.group_id, e.traj_id) for e in episodes if e.env.worker_slot == 0}
                ray.kill(victim, no_restart=True)
                _wait_until_dead(victim)
            stops = list(episodes[0].env.stop_strings)
            return generator.generate([e.token_ids for e in episodes], replace(params, stop=stops))

        make = group.factory(env_id, kwargs)
        groups = _rollout(model_and_tokenizer, make, ChainStrategy(3), tasks=4, policy=kill_then_generate)
        assert killed["episodes"], "no episode was on the killed worker"
        assert group.replaced == 1 and group.actors()[0] is not killed["actor"]
        # The new worker in slot 0 serves envs.
        probe = make()
        assert probe.worker_slot == 0 and probe.reset(seed=1)[0]
        probe.close()

    failed = {(g.group_id, t.traj_id): t for g in groups for t in g.trajectories if t.infra_error}
    assert set(failed) == killed["episodes"]
    assert all("env worker 0 died" in t.infra_error for t in failed.values())
    for g in groups:  # every group got its 3 healthy rollouts: the failed ones were replaced
        assert sum(not t.infra_error for t in g.trajectories) == 3
        assert g.budget["infra_errors"] == sum(1 for t in g.trajectories if t.infra_error)


def _wait_until_dead(actor, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            ray.get(actor.open_envs.remote(), timeout=5)
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
            return
        time.sleep(0.1)
    raise AssertionError("the killed worker still answers")


def test_a_call_on_a_dead_worker_raises_worker_lost_and_a_fork_is_no_fork_error(local_ray):
    with EnvWorkerGroup(1) as group:
        first_pid = group.info[0]["pid"]
        env = group.make_env(*ARITHMETIC)
        env.reset(seed=0)
        ray.kill(group.actors()[0], no_restart=True)
        _wait_until_dead(env._actor)
        with pytest.raises(EnvWorkerLost, match="env worker 0 died"):
            env.step("<answer>1</answer>")
        with pytest.raises(EnvWorkerLost) as lost:
            env.fork()
        assert not isinstance(lost.value, EnvForkError)  # a lost branch, not a replay
        env.close()
        fresh = group.make_env(*ARITHMETIC)  # built on the replacement
        assert fresh.reset(seed=0)[0] and group.replaced == 1
        # The replacement ran its start (imports, sandbox pool) before its first env.
        assert group.info[0].get("pid") not in (None, first_pid) and group.info[0]["pool_size"] == 0
        fresh.close()


def test_a_worker_ray_cannot_place_is_an_error_not_a_wait(local_ray):
    # 64 CPUs of an instance that counts 8: Ray would keep the worker pending for ever.
    with pytest.raises(WorkerStartTimeout, match=r"asks for 64 CPUs; .* give Ray more CPUs"):
        EnvWorkerGroup(1, num_cpus_per_worker=64, start_timeout=2)


# --- a run -------------------------------------------------------------------------------------


def test_agentrl_train_with_ray_enabled_runs_its_envs_in_workers_and_stops_them(tmp_path, local_ray,
                                                                               monkeypatch):
    from agentrl.training import run as run_module
    from agentrl.training.run import run_training

    groups: list[EnvWorkerGroup] = []
    original = EnvWorkerGroup.__init__

    def recording_init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        groups.append(self)

    monkeypatch.setattr(EnvWorkerGroup, "__init__", recording_init)
    config = load_config(None, [
        f"run.out_dir={tmp_path}", "run.name=ray", "env.id=agentrl/ArithmeticTryAgain-v0",
        "env.kwargs={digits: 1, max_turns: 2}", "ray.enabled=true", "ray.workers=2",
        "sft.demos=4", "sft.epochs=1", "eval.tasks=2", "train.iterations=1",
        "rollout.tasks_per_iteration=2", "rollout.group_size=2", "rollout.max_new_tokens=4",
        "model.tiny={vocab_size: 300, hidden_size: 32, num_layers: 1, num_heads: 2, "
        "num_kv_heads: 1, intermediate_size: 64}",
    ])
    made = []
    original_factory = run_module.env_factory

    def spying_factory(*args, **kwargs):
        factory = original_factory(*args, **kwargs)
        made.append(factory)
        return factory

    monkeypatch.setattr(run_module, "env_factory", spying_factory)
    results = run_training(config)
    assert set(results) == {"before RL", "after RL"}
    assert len(groups) == 1
    remote = [f for f in made if type(f).__name__ == "RemoteEnvFactory"]
    assert len(remote) >= 3  # training, evaluation and demonstration envs
    assert ray.is_initialized()  # the run joined this process's Ray and leaves it running
    # And its workers are gone. ray.kill is asynchronous: a call right after it may still be
    # answered by the worker, so the check waits for the death rather than expecting it at once.
    for actor in groups[0].actors():
        _eventually(partial(_has_died, actor))


def _has_died(actor) -> bool:
    try:
        ray.get(actor.open_envs.remote(), timeout=60)
    except ray.exceptions.RayActorError:
        return True
    return False

"""The round-based multi-turn rollout engine.

One call of `RolloutEngine.run` turns a list of tasks into `Group`s of `Trajectory`s:

    start: the strategy asks for the initial episodes; the engine resets their envs
           concurrently (env.reset(seed) + prompt tokens)
    round: every active episode -> one Generator.generate call (token ids in, ids out)
           -> sampled ids appended with loss mask 1 and their behaviour log-probs
           -> all env.step(action_text) run concurrently: envs with a coroutine `astep` (ToolEnv)
              together on the tools' event loop, others in a thread pool
           -> the template delta (closing + observation + generation prompt) appended, mask 0;
              the turn becomes a node of the group's tree (a new node id)
           -> with a branching strategy, a fork of each live env is kept at its new node
           -> replacements for episodes the infrastructure ended (`info["infra_error"]`, an env
              that raised, a failed fork), then the strategy's new episodes (branches), started
              concurrently: `RolloutContext.branch(episode, at_turn=k)` copies k turns exactly
              and forks the env kept at node k (or replays the k actions when it cannot fork)
    until no episode is active; then the strategy picks each group's episodes (`finish`), and
    each becomes a Trajectory of its task's Group, with the group's budget counts.

The engine knows envs only through the TextEnv contract and models only through the
Generator protocol; the token-space conversation is built by `ChatTemplater`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from functools import partial
from typing import Any, Callable, Sequence

from agentrl.generation.seeding import derive_seed
from agentrl.envs.base import EnvForkError
from agentrl.envs.tool_env import ToolEnv
from agentrl.rollout.chat import ChatTemplater
from agentrl.rollout.context import BranchError, EpisodeRequest, RolloutContext
from agentrl.rollout.entropy_strategy import EntropyUnmeasurable
from agentrl.rollout.episode import Episode
from agentrl.rollout.strategies import Strategy
from agentrl.tools.cache import ToolCache
from agentrl.tools.runner import run_sync
from agentrl.types import Completion, Group, Message, SamplingParams, Step


class RolloutEngine:
    """Drives many episodes through one generator and many envs.

    Args:
        generator: anything with `generate(prompts, params) -> list[Completion]`.
        tokenizer: the Hugging Face tokenizer of the generator's model (with a chat template).
        sampling: per-turn sampling parameters; the env's stop strings are added to `stop`.
        max_turns: turn limit per episode (default: each env's own `max_turns`).
        max_total_tokens: an episode whose conversation reaches this length is truncated.
        env_workers: threads that step envs concurrently (tool calls wait on I/O).
        check_template: after every round, assert the token-space conversation equals a
            fresh render of the chat template (slow; for debugging and tests).
    """

    def __init__(
        self,
        generator: Any,
        tokenizer: Any,
        sampling: SamplingParams,
        *,
        max_turns: int | None = None,
        max_total_tokens: int = 2048,
        env_workers: int = 8,
        check_template: bool = False,
    ) -> None:
        self.generator = generator
        self.tokenizer = tokenizer
        self.sampling = sampling
        self.max_turns = max_turns
        self.max_total_tokens = max_total_tokens
        self.check_template = check_template
        self._pool = ThreadPoolExecutor(max_workers=env_workers, thread_name_prefix="agentrl-env")
        self._templaters: dict[str, ChatTemplater] = {}

    # --- resources ---------------------------------------------------------------------------

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> "RolloutEngine":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- the driver --------------------------------------------------------------------------

    def run(
        self,
        make_env: Callable[[], Any],
        tasks: Sequence[dict[str, Any]],
        strategy: Strategy,
        *,
        close_envs: bool = True,
        policy: Callable[[list[Episode], SamplingParams], list[Completion]] | None = None,
    ) -> list[Group]:
        """Roll out every task with `strategy`; `tasks[i]` holds `seed` and optional `options`.

        Group ids are the task indices. Envs are closed at the end unless `close_envs=False`.
        `policy` replaces the generator (e.g. `oracle_policy` to write demonstrations through
        exactly the same token-space path as sampled rollouts).
        """
        act = policy or self._generate
        params = strategy.sampling_params(self.sampling)
        if params.top_logprobs > 0 and policy is None and not getattr(self.generator, "returns_top_logprobs", False):
            raise EntropyUnmeasurable(
                f"{type(strategy).__name__} needs the top-{params.top_logprobs} log-probs of every "
                f"sampled token, and {type(self.generator).__name__} does not return them "
                "(returns_top_logprobs is not True); use HFGenerator or OpenAIGenerator, or fill "
                "Completion.top_logprobs in yours and set returns_top_logprobs = True on it")
        budgets: dict[int, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        rollout = RolloutContext(len(tasks), params.seed)
        keep_forks = bool(getattr(strategy, "keep_node_forks", False))
        # A strategy may say which episodes it could still branch from (forks cost a sandbox).
        wants_fork = getattr(strategy, "keep_fork", lambda episode: True)
        # One cache of stateless tool results per task: a group's repeated searches run once.
        tool_caches: dict[int, ToolCache] = defaultdict(ToolCache)
        # Starts requested episodes; the context keeps every episode started.
        start = partial(self._start, make_env, tasks, tool_caches, rollout, budgets)

        def refill(failed: list[Episode]) -> None:
            """Replacements for episodes the infrastructure ended (and for theirs, in turn)."""
            while failed:
                failed = [e for e in start(strategy.refill(failed, rollout)) if e.infra_error]

        # Every turn's prompt continues the episode's previous prompt and completion, and a
        # branch continues its parent's, so a generator that keeps their keys and values
        # (HFGenerator.prefix_cache) prefills only what is new. The weights do not change
        # during a run.
        prefix_cache = getattr(self.generator, "prefix_cache", None) if policy is None else None
        try:
            with prefix_cache() if prefix_cache is not None else contextlib.nullcontext():
                refill([e for e in start(strategy.start(len(tasks), rollout)) if e.infra_error])
                active = [e for e in rollout.episodes() if not e.done]
                while active:
                    taken = self._round(active, params, budgets, act, rollout)
                    if keep_forks:
                        self._keep_forks([e for e, _ in taken if not e.done and wants_fork(e)],
                                         rollout, budgets)
                    refill([e for e, _ in taken if e.infra_error])
                    refill([e for e in start(strategy.after_round(taken, rollout)) if e.infra_error])
                    active = [e for e in rollout.episodes() if not e.done]
        finally:
            if close_envs:
                _close_all([e.env for e in rollout.episodes()] + list(rollout.node_forks.values()))

        groups: dict[int, Group] = {}
        for group_id in sorted({e.group_id for e in rollout.episodes()}):
            members = rollout.episodes(group_id)
            kept = strategy.finish(members) if hasattr(strategy, "finish") else members
            group = groups[group_id] = Group(group_id=group_id, task=dict(tasks[group_id]))
            group.trajectories = [e.to_trajectory() for e in kept]
            budget = budgets[group_id]
            budget["infra_errors"] += sum(1 for e in members if e.infra_error)
            budget["trajectories"] += len(group.trajectories)
            budget["trajectories/sampled"] += len(members)
            group.budget = dict(budget)
        return [groups[k] for k in sorted(groups)]

    # --- starting episodes: fresh rollouts and branches --------------------------------------

    def _start(self, make_env: Callable[[], Any], tasks: Sequence[dict[str, Any]],
               tool_caches: dict[int, ToolCache], rollout: RolloutContext,
               budgets: dict[int, dict[str, float]], requests: list[EpisodeRequest]) -> list[Episode]:
        """Start the requested episodes concurrently: env resets, forks and replays run in the
        thread pool. Episodes come back in request order."""
        if not requests:
            return []
        t0 = time.perf_counter()
        lock = threading.Lock()

        def new_env() -> Any:
            with lock:  # `make_env` need not be thread-safe
                return make_env()

        jobs = [self._pool.submit(self._start_one, request, new_env, tasks[request.group_id],
                                  tool_caches[request.group_id], rollout) for request in requests]
        episodes = []
        for request, job in zip(requests, jobs):
            episode, counts = job.result()  # a BranchError (an env that cannot branch) surfaces here
            rollout.add(episode)
            episodes.append(episode)
            for key, value in counts.items():
                budgets[request.group_id][key] += value
        elapsed = time.perf_counter() - t0
        for request in requests:
            phase = "time/reset" if request.source is None else "time/branch"
            budgets[request.group_id][phase] += elapsed / len(requests)
        return episodes

    def _start_one(self, request: EpisodeRequest, new_env: Callable[[], Any], task: dict[str, Any],
                   tool_cache: ToolCache, rollout: RolloutContext) -> tuple[Episode, dict[str, float]]:
        """One requested episode and what starting it cost (budget counts)."""
        source, k = request.source, request.at_turn
        if source is None or k == 0:
            fresh_env = new_env()
            episode = self._new_episode(fresh_env, task, request.group_id, request.traj_id, tool_cache)
            episode.tree_id = request.tree_id
            if source is None:
                return episode, {}
            episode.branched_from = (source.traj_id, 0)
            if not episode.infra_error and episode.token_ids != source.token_ids[:source.prompt_len]:
                raise BranchError(f"{_env_name(fresh_env)}: reset(seed={task.get('seed')}) gave a "
                                  "different prompt the second time; make reset() depend on its seed "
                                  "and options only, so branches of one task start alike")
            return episode, {"branches": 1}
        counts = {"branches": 1.0}
        env = None
        try:
            env = self._env_after(source, k, rollout)
            if env is None:  # the env cannot fork: replay its first k actions on a fresh one
                env = new_env()
                counts.update(self._replay(env, source, k, task, tool_cache))
        except BranchError:
            raise
        except Exception as exc:  # noqa: BLE001 - a failed fork loses one branch, not the run
            _close_all([env])
            branch = source.prefix(k, None, request.traj_id)
            branch.done, branch.truncated = True, True
            branch.infra_error = f"branch failed: {type(exc).__name__}: {exc}"
            return branch, counts
        if not getattr(env, "fork_exact", True):  # a fork that ran the prefix's tool calls again
            counts["branches/inexact"] = 1
        return source.prefix(k, env, request.traj_id), counts

    @staticmethod
    def _env_after(source: Episode, k: int, rollout: RolloutContext) -> Any:
        """An env in `source`'s state after turn k, forked from the fork kept at that node or
        from the live env; None when the env cannot fork (EnvForkError)."""
        kept = rollout.node_forks.get((source.group_id, source.steps[k - 1].node_id))
        if isinstance(kept, Exception):
            raise kept  # the fork at this node failed when it was taken
        try:
            if kept is not None:
                return kept.fork()  # the kept fork stays, for further branches of the same node
            if k == source.turns and not source.done:
                return source.env.fork()
        except EnvForkError:
            return None
        return None

    def _replay(self, env: Any, source: Episode, k: int, task: dict[str, Any],
                tool_cache: ToolCache) -> dict[str, float]:
        """Bring a fresh env to `source`'s state after turn k by replaying its actions, and
        check that it saw the same observations (else the branch would not be the same state)."""
        options = self._reset_options(env, task, tool_cache)
        env.reset(seed=task.get("seed"), options=options)
        tool_calls = 0
        for turn, step in enumerate(source.steps[:k], start=1):
            observation, reward, _, _, info = env.step(step.action_text)
            tool_calls += len(info.get("tool_calls", []))
            if observation != step.observation or float(reward) != step.reward:
                env.close()
                raise BranchError(
                    f"{_env_name(env)} cannot fork (its fork() raised EnvForkError) and replaying "
                    f"its actions gave a different observation or reward at turn {turn}; make "
                    "fork() copy the env's state, or make step() depend only on reset(seed) and "
                    "the actions")
        return {"branches/replayed": 1, "env_steps/replayed": k, "tool_calls/replayed": tool_calls}

    def _keep_forks(self, live: list[Episode], rollout: RolloutContext,
                    budgets: dict[int, dict[str, float]]) -> None:
        """Keep a fork of each live env at its newest node, for later branches from there. An
        env that cannot fork is replayed instead when a branch needs it."""
        if not live:
            return
        t0 = time.perf_counter()
        forks = list(self._pool.map(_try_fork, [e.env for e in live]))
        for episode, fork in zip(live, forks):
            if fork is not None:  # a fork, or the error of a fork that failed
                rollout.node_forks[(episode.group_id, episode.steps[-1].node_id)] = fork
        elapsed = time.perf_counter() - t0
        for episode in live:
            budgets[episode.group_id]["time/branch"] += elapsed / len(live)

    # --- one round ---------------------------------------------------------------------------

    def _generate(self, active: list[Episode], params: SamplingParams) -> list[Completion]:
        """One generator call per distinct stop-string set; completions in `active` order.

        With `params.seed` set, every completion gets its own seed, derived from that seed and
        the completion's group, trajectory and turn: noise is never shared between turns, rows
        or branches, and the same seed reproduces the run whatever the batches look like.
        """
        completions: list[Completion | None] = [None] * len(active)
        by_stops: dict[tuple[str, ...], list[int]] = defaultdict(list)
        for i, episode in enumerate(active):
            by_stops[tuple(episode.env.stop_strings)].append(i)
        for stops, indices in by_stops.items():
            batch_params = replace(params, stop=list(dict.fromkeys([*params.stop, *stops])))
            seeds = None
            if params.seed is not None:
                seeds = [derive_seed(params.seed, active[i].group_id, active[i].traj_id, active[i].turns)
                         for i in indices]
            outs = self.generator.generate([active[i].token_ids for i in indices], batch_params, seeds)
            for i, out in zip(indices, outs):
                completions[i] = out
        return completions  # type: ignore[return-value]

    def _round(
        self,
        active: list[Episode],
        params: SamplingParams,
        budgets: dict[int, dict[str, float]],
        act: Callable[[list[Episode], SamplingParams], list[Completion]],
        rollout: RolloutContext,
    ) -> list[tuple[Episode, Completion]]:
        # 1. Generate one turn for every active episode.
        t0 = time.perf_counter()
        completions = act(active, params)
        generate_time = time.perf_counter() - t0

        # 2. Append the sampled ids (loss mask 1) and send the action texts to the envs.
        actions = []
        for episode, completion in zip(active, completions):
            episode.token_ids.extend(completion.token_ids)
            episode.loss_mask.extend([1] * len(completion.token_ids))
            episode.logprobs.extend(completion.logprobs)
            actions.append(self._action_text(completion))
            budget = budgets[episode.group_id]
            budget["tokens/generated"] += len(completion.token_ids)
            budget["tokens/prompt_processed"] += (len(episode.token_ids) - len(completion.token_ids)
                                                  - completion.prompt_cached_tokens)
            budget["tokens/prompt_cached"] += completion.prompt_cached_tokens
            budget["time/generate"] += generate_time / len(active)

        t1 = time.perf_counter()
        results = self._step_all([e.env for e in active], actions)
        env_time = time.perf_counter() - t1

        # 3. Record the step, append the observation delta (mask 0), decide who is done.
        for episode, completion, action, result in zip(active, completions, actions, results):
            observation, reward, terminated, truncated, info = result
            budget = budgets[episode.group_id]
            budget["time/env"] += env_time / len(active)
            budget["env_steps"] += 1
            budget["tool_calls"] += len(info.get("tool_calls", []))
            action_end = len(episode.token_ids)
            step = Step(
                action_text=action,
                action_span=(action_end - len(completion.token_ids), action_end),
                observation=observation,
                reward=float(reward),
                anchor=episode.anchor,
                action_valid=bool(info.get("action_valid", True)),
                finish_reason=completion.finish_reason,
                info={k: v for k, v in info.items() if k != "anchor"},
                node_id=rollout.new_node(episode.group_id),
            )
            episode.steps.append(step)
            episode.messages.append(Message("assistant", action))
            episode.last_info = info
            episode.success = bool(info.get("success", False))
            episode.anchor = info.get("anchor")

            if info.get("infra_error"):
                # The infrastructure failed, not the policy: end here; never trained on.
                episode.infra_error = str(info["infra_error"])
            max_turns = self.max_turns or getattr(episode.env, "max_turns", None)
            hit_turn_limit = max_turns is not None and episode.turns >= max_turns
            ended = bool(terminated or truncated or hit_turn_limit or episode.infra_error)
            obs_message = None if ended else Message(episode.env.observation_role, observation)
            templater = episode.templater
            delta = templater.delta_ids(
                episode.messages, completion.finish_reason == "eos", obs_message
            )
            obs_start = len(episode.token_ids)
            episode.token_ids.extend(delta)
            episode.loss_mask.extend([0] * len(delta))
            episode.logprobs.extend([0.0] * len(delta))
            step.observation_span = (obs_start, len(episode.token_ids))
            if obs_message is not None:
                episode.messages.append(obs_message)
            if not ended and len(episode.token_ids) + 1 >= self.max_total_tokens:
                ended = True
                episode.truncated = True
            episode.truncated = episode.truncated or (ended and not terminated and not episode.success)
            episode.done = ended
            if self.check_template:
                templater.check_append(episode.token_ids, episode.messages, add_generation_prompt=not ended)
        return list(zip(active, completions))

    # --- helpers -----------------------------------------------------------------------------

    def _step_all(self, envs: list[Any], actions: list[str]) -> list[tuple]:
        """Step every env once. Envs whose `step` runs a coroutine `astep` are stepped together
        in one visit to the tools' event loop (one thread hand-off per round instead of one per
        env, which on two cores cost more than the search itself); any other env makes the
        whole round run in the thread pool."""
        if envs and all(_coroutine_step(env) for env in envs):
            return run_sync(_astep_all(envs, actions))
        return list(self._pool.map(_safe_step, envs, actions))

    def _new_episode(self, env: Any, task: dict[str, Any], group_id: int, traj_id: int,
                     tool_cache: ToolCache | None = None) -> Episode:
        options = self._reset_options(env, task, tool_cache)
        try:
            observation, info = env.reset(seed=task.get("seed"), options=options)
        except Exception as exc:  # noqa: BLE001 - a crashed reset loses one episode, not the run
            return Episode(env=env, templater=None, token_ids=[], loss_mask=[], logprobs=[],
                           prompt_len=0, messages=[], task=dict(task), group_id=group_id,
                           traj_id=traj_id, done=True, truncated=True,
                           infra_error=f"env reset failed: {type(exc).__name__}: {exc}")
        messages = []
        if env.system_prompt:
            messages.append(Message("system", env.system_prompt))
        messages.append(Message("user", observation))
        templater = self._templater(env)
        prompt = templater.prompt_ids(messages)
        return Episode(
            env=env,
            templater=templater,
            token_ids=list(prompt),
            loss_mask=[0] * len(prompt),
            logprobs=[0.0] * len(prompt),
            prompt_len=len(prompt),
            messages=messages,
            task=dict(task),
            group_id=group_id,
            traj_id=traj_id,
            anchor=info.get("anchor"),
            last_info=info,
        )

    @staticmethod
    def _reset_options(env: Any, task: dict[str, Any], tool_cache: ToolCache | None) -> Any:
        options = task.get("options")
        if tool_cache is not None and isinstance(getattr(env, "unwrapped", env), ToolEnv):
            options = {**(options or {}), "tool_cache": tool_cache}
        return options

    def _templater(self, env: Any) -> ChatTemplater:
        specs = tuple(getattr(env, "tool_specs", ()) or ())
        key = json.dumps(specs, sort_keys=True, default=str)
        if key not in self._templaters:
            self._templaters[key] = ChatTemplater(self.tokenizer, specs)
        return self._templaters[key]

    def _action_text(self, completion: Completion) -> str:
        text = completion.text
        if not text and completion.token_ids:
            text = self.tokenizer.decode(completion.token_ids, skip_special_tokens=False)
        eos = self.tokenizer.eos_token
        if completion.finish_reason == "eos" and eos and text.endswith(eos):
            text = text[: -len(eos)]
        return text


def _try_fork(env: Any) -> Any:
    """env.fork(); None when the env cannot fork (a branch from here replays instead); the
    exception when the fork failed (a branch from here is an infrastructure failure)."""
    try:
        return env.fork()
    except EnvForkError:
        return None
    except Exception as exc:  # noqa: BLE001 - a failed fork costs the branches from it, not the rollout
        return exc


def _close_all(envs: list[Any]) -> None:
    for env in envs:
        if env is None or isinstance(env, Exception):
            continue
        try:
            env.close()
        except Exception:  # noqa: BLE001 - closing must not mask the real error
            pass


def _env_name(env: Any) -> str:
    spec = getattr(env, "spec", None)
    return getattr(spec, "id", None) or type(getattr(env, "unwrapped", env)).__name__


def _coroutine_step(env: Any) -> bool:
    """Whether `env.step(a)` is just `env.astep(a)` run to completion: the nearest class that
    defines `step` also defines `astep` (a subclass or wrapper that overrides `step` alone
    must keep its own `step`)."""
    for klass in type(env).__mro__:
        if "step" in vars(klass):
            return callable(vars(klass).get("astep"))
    return False


def _env_error(exc: Exception):
    """The step of an env that raised: the episode ends as an infrastructure failure."""
    message = f"Environment error: {type(exc).__name__}: {exc}"
    return message, 0.0, False, True, {"action_valid": False, "env_error": message, "infra_error": message}


def _safe_step(env: Any, action: str):
    """env.step, with an env crash turned into a terminal, invalid step instead of a lost batch."""
    try:
        return env.step(action)
    except Exception as exc:  # noqa: BLE001 - one broken env must not kill the whole rollout
        return _env_error(exc)


async def _astep_all(envs: list[Any], actions: list[str]) -> list[tuple]:
    return list(await asyncio.gather(*(_safe_astep(env, a) for env, a in zip(envs, actions))))


async def _safe_astep(env: Any, action: str):
    """`_safe_step` for an env stepped on the event loop."""
    try:
        return await env.astep(action)
    except Exception as exc:  # noqa: BLE001 - one broken env must not kill the whole rollout
        return _env_error(exc)

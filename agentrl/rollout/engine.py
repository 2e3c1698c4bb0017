"""The round-based multi-turn rollout engine.

One call of `RolloutEngine.run` turns a list of tasks into `Group`s of `Trajectory`s:

    start: the strategy spawns the initial episodes (env.reset(seed) + prompt tokens)
    round: every active episode -> one Generator.generate call (token ids in, ids out)
           -> sampled ids appended with loss mask 1 and their behaviour log-probs
           -> all env.step(action_text) run concurrently: envs with a coroutine `astep` (ToolEnv)
              together on the tools' event loop, others in a thread pool
           -> the template delta (closing + observation + generation prompt) appended, mask 0
           -> the strategy may add branches (forks) of episodes, and replacements for episodes
              the infrastructure ended (`info["infra_error"]`, or an env that raised)
    until no episode is active; then each episode becomes a Trajectory of its task's Group.

The engine knows envs only through the TextEnv contract and models only through the
Generator protocol; the token-space conversation is built by `ChatTemplater`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any, Callable, Sequence

from agentrl.generation.seeding import derive_seed
from agentrl.envs.tool_env import ToolEnv
from agentrl.rollout.chat import ChatTemplater
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
        budgets: dict[int, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        counters = defaultdict(int)

        # One cache of stateless tool results per task: a group's repeated searches run once.
        tool_caches: dict[int, ToolCache] = defaultdict(ToolCache)

        def spawn(task_index: int) -> Episode:
            traj_id = counters[task_index]
            counters[task_index] += 1
            return self._new_episode(make_env(), tasks[task_index], task_index, traj_id,
                                     tool_caches[task_index])

        def refill(failed: list[Episode]) -> list[Episode]:
            """Replacements for episodes the infrastructure ended (and for theirs, in turn)."""
            added: list[Episode] = []
            refill_with = getattr(strategy, "refill", None)
            while failed and refill_with is not None:
                new = refill_with(failed, spawn)
                added.extend(new)
                failed = [e for e in new if e.infra_error]
            return added

        started = time.perf_counter()
        episodes = strategy.start(len(tasks), spawn)
        episodes.extend(refill([e for e in episodes if e.infra_error]))
        reset_time = time.perf_counter() - started

        # Every turn's prompt continues the episode's previous prompt and completion, so a
        # generator that keeps their keys and values (HFGenerator.prefix_cache) prefills only
        # what the env appended. The weights do not change during a run.
        prefix_cache = getattr(self.generator, "prefix_cache", None) if policy is None else None
        try:
            with prefix_cache() if prefix_cache is not None else contextlib.nullcontext():
                active = [e for e in episodes if not e.done]
                while active:
                    taken = self._round(active, params, budgets, act)
                    new = strategy.after_round(taken, spawn)
                    for branch in new:
                        if branch.traj_id >= counters[branch.group_id]:
                            counters[branch.group_id] = branch.traj_id + 1
                    episodes.extend(new)
                    episodes.extend(refill([e for e, _ in taken if e.infra_error]))
                    active = [e for e in episodes if not e.done]
        finally:
            if close_envs:
                for episode in episodes:
                    try:
                        episode.env.close()
                    except Exception:  # noqa: BLE001 - closing must not mask the real error
                        pass

        groups: dict[int, Group] = {}
        for episode in episodes:
            group = groups.setdefault(
                episode.group_id, Group(group_id=episode.group_id, task=dict(tasks[episode.group_id]))
            )
            group.trajectories.append(episode.to_trajectory())
        for episode in episodes:
            if episode.infra_error:
                budgets[episode.group_id]["infra_errors"] += 1
        for group_id, group in groups.items():
            group.budget = dict(budgets[group_id])
            group.budget["time/reset"] = reset_time / max(1, len(groups))
        return [groups[k] for k in sorted(groups)]

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
        options = task.get("options")
        if tool_cache is not None and isinstance(getattr(env, "unwrapped", env), ToolEnv):
            options = {**(options or {}), "tool_cache": tool_cache}
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

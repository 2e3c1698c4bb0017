"""`ToolEnv`: an environment made of tools, a task and a reward function.

    env = ToolEnv(tools=[SearchTool(index)], tasks=[Task("Where was Bekora Talim born?", "Lumeva")],
                  reward_fn=exact_match_reward, max_turns=4)
    obs, info = env.reset(seed=0)               # obs: the task prompt
    obs, reward, terminated, truncated, info = env.step("<search>Bekora Talim</search>")

One step is one model turn. The turn is parsed by the env's tool-call format (`"xml"` tags
such as `<search>q</search>`, or `"hermes"` `<tool_call>{json}</tool_call>`); see
`agentrl.envs.parsing`. Then:

- a final answer (`<answer>...</answer>`) ends the episode (`terminated`); the reward function
  scores it;
- tool calls run concurrently (calls of one stateful tool run in order), each tool's calls
  under `call_timeout`; their results, wrapped in the format's result tags, are the next
  observation;
- a malformed turn is never dropped: the observation is a short, stable error message,
  `info["action_valid"]` is False and `invalid/<kind>` counts it;
- when `max_turns` turns pass without an answer, the episode is `truncated` and scored as
  unanswered.

Observations go back with `observation_role = "user"` by default: every chat template accepts
user messages, and the result tags already mark them as tool output. Pass
`observation_role="tool"` for templates with a tool role (Qwen, Hermes).

`stop_strings` are the closing tags of calls and of the answer, so a generation turn ends at
the first complete action. Stateless tools (search) share one `ToolCache` per group: identical
calls are answered from it and counted in `tools/cache_hits`. `fork()` copies the episode,
forks stateful tools (a python sandbox fork, a browser session copy) and shares stateless ones
and the cache.

`info` holds the keys of `agentrl.envs.base` (anchor = the observation text the agent acts on
next) and episode-cumulative metrics: `tools/calls`, `tools/errors` (the model's failed calls),
`tools/timeouts`, `tools/infra_errors`, `tools/infra_retries`, `tools/cache_hits`,
`tools/<tool>/calls` and `tools/<tool>/seconds` (time the env waited on that tool), and
`invalid/<kind>` for every `InvalidKind`, plus `turn`, `answer` and `invalid_kind`. A step whose
tool failed for infrastructure reasons also carries `infra_error` (see `agentrl.envs.base`).
"""

from __future__ import annotations

import asyncio
import copy
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence, SupportsFloat, Union

import numpy as np

from agentrl.envs.base import TextEnv, make_info, to_text
from agentrl.envs.parsing import ActionError, InvalidKind, ParsedAction, ToolCall, FormatSpec, get_format
from agentrl.tools.base import Tool, ToolResult, ToolStatus, truncate
from agentrl.tools.cache import ToolCache, call_key
from agentrl.tools.runner import run_sync


@dataclass
class Task:
    """One problem: the prompt the agent sees, the reference answer, and task-specific data.

    `oracle` is the plan of a perfect agent, one entry per turn: `(tool_name, arguments)` for a
    tool call or `("answer", {"answer": text})`; `ToolEnv.oracle_action` renders it in the
    env's call format.
    """

    prompt: str
    answer: Any = None
    id: str = ""
    data: dict[str, Any] = field(default_factory=dict)
    oracle: tuple[tuple[str, dict[str, Any]], ...] = ()


@dataclass
class Episode:
    """What happened so far in an episode; the reward function reads it."""

    task: Task
    turns: int = 0
    answer: str | None = None
    answered: bool = False
    tool_calls: Counter = field(default_factory=Counter)  # calls per tool name
    invalid: Counter = field(default_factory=Counter)     # invalid actions per InvalidKind value
    metrics: Counter = field(default_factory=Counter)     # tools/... counters
    done: bool = False
    last_observation: str = ""
    #: Turns played by `mistaken_action()` (demonstrations of recovering from a mistake); the
    #: oracle plan does not count them, so the oracle's next step follows the last right one.
    mistakes: int = 0

    @property
    def invalid_actions(self) -> int:
        return sum(self.invalid.values())


@dataclass(frozen=True)
class Score:
    """A reward and whether the task counts as solved."""

    reward: float
    success: bool


#: `reward_fn(task, episode) -> Score | float`; a plain float counts as success when >= 1.
RewardFn = Callable[[Task, Episode], Union[Score, float]]
#: Where tasks come from: a list (picked by the reset seed) or a function of the seeded RNG.
TaskSource = Union[Sequence[Task], Callable[[np.random.Generator], Task]]

DEFAULT_SYSTEM_PROMPT = "Solve the task. You can call tools, one per turn:\n{tools}"


class ToolEnv(TextEnv):
    """Tools + tasks + reward, with turn and tool-call budgets.

    Args:
        tools: the tools the agent may call (names must be unique). Stateless tools may be
            shared between envs; stateful ones belong to this env (closed by `close()`).
        tasks: a sequence of `Task` (reset picks one with the seeded RNG, or
            `options={"task_index": i}`) or a function `rng -> Task`.
        reward_fn: scores the episode when it ends.
        call_format: "xml", "hermes", a mapping of a format name and its options (e.g.
            `{"name": "xml", "body_prefix": " "}`, as a recipe writes it) or a `ToolCallFormat`.
        max_turns: turns per episode.
        max_tool_calls: tool calls per episode; later calls are refused (`invalid/tool_budget`).
        max_calls_per_turn: more calls than this in one turn is an invalid action.
        call_timeout: seconds allowed for one tool's calls in a turn.
        max_result_chars: each tool result shown to the model is cut to this, with a marker.
        system_prompt: the system message; "{tools}" is replaced by the format's tool list.
        observation_role: "user" (default) or "tool".
    """

    def __init__(
        self,
        tools: Sequence[Tool],
        tasks: TaskSource,
        reward_fn: RewardFn,
        *,
        call_format: FormatSpec = "xml",
        max_turns: int = 4,
        max_tool_calls: int = 8,
        max_calls_per_turn: int = 3,
        call_timeout: float = 30.0,
        max_result_chars: int = 4000,
        system_prompt: str | None = None,
        observation_role: str = "user",
        render_mode: str | None = None,
    ) -> None:
        super().__init__(render_mode=render_mode)
        names = [t.name for t in tools]
        if len(set(names)) != len(names):
            raise ValueError(f"tool names must be unique, got {names}")
        if observation_role not in ("user", "tool"):
            raise ValueError(f"observation_role must be 'user' or 'tool', got {observation_role!r}")
        if not callable(tasks) and len(tasks) == 0:
            raise ValueError("tasks is empty: pass at least one Task or a function rng -> Task")
        self.tools: dict[str, Tool] = {t.name: t for t in tools}
        self.tasks = tasks
        self.reward_fn = reward_fn
        self.format = get_format(call_format)
        self.max_turns = max_turns
        self.max_tool_calls = max_tool_calls
        self.max_calls_per_turn = max_calls_per_turn
        self.call_timeout = call_timeout
        self.max_result_chars = max_result_chars
        self.observation_role = observation_role
        template = DEFAULT_SYSTEM_PROMPT if system_prompt is None else system_prompt
        self.system_prompt = template.replace("{tools}", self.format.instructions(self.tools))
        self.stop_strings = self.format.stop_strings(self.tools)
        # Only formats that need them (Hermes) give the specs to the chat template; XML tags
        # are already described by the system prompt.
        self.tool_specs = (tuple(t.openai_spec() for t in self.tools.values())
                           if getattr(self.format, "template_tools", True) else ())
        self.tool_cache = ToolCache()
        self.episode: Episode | None = None

    # --- the Gymnasium contract -------------------------------------------------------------

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
        super().reset(seed=seed)
        options = options or {}
        self._transcript = []
        shared = options.get("tool_cache")
        # `is None`, not `or`: an empty cache has length 0 and is falsy, yet it is the group's.
        self.tool_cache = shared if shared is not None else ToolCache()
        for tool in self.tools.values():
            tool.reset()
        task = self._pick_task(options.get("task_index"))
        self.episode = Episode(task=task, last_observation=task.prompt)
        self._record("user", task.prompt)
        return to_text(task.prompt), make_info(anchor=task.prompt, **self._metrics(None))

    def step(self, action: str) -> tuple[str, SupportsFloat, bool, bool, dict[str, Any]]:
        return run_sync(self.astep(action))

    async def astep(self, action: str) -> tuple[str, SupportsFloat, bool, bool, dict[str, Any]]:
        """`step` as a coroutine, for rollout engines that run envs on their own event loop."""
        episode = self.episode
        if episode is None:
            raise RuntimeError("step() called before reset(); call reset() first")
        if episode.done:
            raise RuntimeError("step() called after the episode ended; call reset() first")
        self._record("assistant", action)
        episode.turns += 1
        parsed = self.format.parse(action, self.tools, max_calls=self.max_calls_per_turn)
        if parsed.valid and parsed.calls:
            used = sum(episode.tool_calls.values())
            if used + len(parsed.calls) > self.max_tool_calls:
                parsed = ParsedAction(error=ActionError(
                    InvalidKind.TOOL_BUDGET,
                    f"Tool-call budget spent ({self.max_tool_calls} calls per episode). "
                    f"Answer now with {self.format.render_answer('...')}.",
                ))

        reward, terminated, calls_info, infra_errors = 0.0, False, [], []
        if parsed.error is not None:
            episode.invalid[parsed.error.kind.value] += 1
            observation = parsed.error.message
        elif parsed.answer is not None:
            episode.answer, episode.answered, terminated = parsed.answer, True, True
            observation = ""
        else:
            results = await self._run_calls(parsed.calls)
            for call, result in zip(parsed.calls, results):
                episode.tool_calls[call.name] += 1
                calls_info.append({**call.to_dict(), "status": result.status.value})
                if result.status is ToolStatus.INFRA_ERROR:
                    infra_errors.append(f"{call.name}: {result.data.get('error') or result.text}")
            observation = self.format.render_results([self._shown(r) for r in results])

        truncated = not terminated and episode.turns >= self.max_turns
        success = False
        if terminated or truncated:
            episode.done = True
            # A reward may run code (unit tests in a sandbox): keep it off the event loop.
            score = await asyncio.to_thread(self._score)
            reward, success = score.reward, score.success
        observation = to_text(observation)
        episode.last_observation = observation
        if observation:
            self._record(self.observation_role, observation)
        kind = parsed.error.kind.value if parsed.error is not None else None
        info = make_info(
            anchor=observation, success=success, action_valid=parsed.valid, tool_calls=calls_info,
            **self._metrics(kind),
        )
        if infra_errors:
            # A tool's infrastructure failed after its retries: the rollout engine ends the
            # episode and keeps it out of training (the policy did nothing wrong).
            info["infra_error"] = "; ".join(infra_errors)
        return observation, reward, terminated, truncated, info

    def close(self) -> None:
        """Release stateful tools (sandboxes, browser clients); stateless ones may be shared."""
        for tool in self.tools.values():
            if tool.stateful:
                tool.close()

    # --- agentrl additions -------------------------------------------------------------------

    def fork(self) -> "ToolEnv":
        """An independent copy in the same state: stateful tools forked, stateless ones and the
        group's cache shared."""
        twin = copy.copy(self)
        memo: dict[int, Any] = {}
        forked: dict[str, Any] = {}
        try:
            for name, tool in self.tools.items():
                forked[name] = tool.fork(memo)
        except BaseException:
            for tool in forked.values():  # a failed fork must not leak the sandboxes made so far
                if tool.stateful:
                    tool.close()
            raise
        twin.tools = forked
        # Exact when every tool's state was copied (a python tool may replay its calls instead).
        inexact = [getattr(t, "fork_note", "") for t in forked.values() if not getattr(t, "fork_exact", True)]
        twin.fork_exact, twin.fork_note = not inexact, "; ".join(inexact)
        twin.episode = copy.deepcopy(self.episode)
        twin._transcript = list(self._transcript)
        twin._np_random = copy.deepcopy(self._np_random)
        return twin

    def oracle_action(self) -> str:
        """The next action of the task's oracle plan, rendered in this env's call format."""
        if self.episode is None:
            raise RuntimeError("oracle_action() called before reset()")
        plan = self.episode.task.oracle
        if not plan:
            raise NotImplementedError(f"the task {self.episode.task.id!r} has no oracle plan")
        name, arguments = plan[min(self.episode.turns - self.episode.mistakes, len(plan) - 1)]
        if name == "answer":
            return self.format.render_answer(str(arguments["answer"]))
        return self.format.render_call(name, arguments, self.tools)

    # --- internals ----------------------------------------------------------------------------

    def _pick_task(self, index: int | None) -> Task:
        if callable(self.tasks):
            return self.tasks(self.np_random)
        if index is None:
            index = int(self.np_random.integers(len(self.tasks)))
        return self.tasks[index % len(self.tasks)]

    def _score(self) -> Score:
        score = self.reward_fn(self.episode.task, self.episode)
        if not isinstance(score, Score):
            score = Score(float(score), float(score) >= 1.0)
        return score

    async def _run_calls(self, calls: list[ToolCall]) -> list[ToolResult]:
        """Run a turn's calls: each tool's calls together (in order for stateful tools, as one
        batch for stateless ones), different tools concurrently."""
        by_tool: dict[str, list[int]] = {}
        for i, call in enumerate(calls):
            by_tool.setdefault(call.name, []).append(i)
        results: list[ToolResult | None] = [None] * len(calls)

        async def run_tool(name: str, indices: list[int]) -> None:
            tool = self.tools[name]
            started = time.perf_counter()
            for i, result in zip(indices, await self._call_tool(tool, [calls[i] for i in indices])):
                results[i] = result
            # Per-tool latency as the env waits for it (cache hits included).
            self.episode.metrics[f"tools/{name}/seconds"] += time.perf_counter() - started
            self.episode.metrics[f"tools/{name}/calls"] += len(indices)

        await asyncio.gather(*(run_tool(name, idx) for name, idx in by_tool.items()))
        for result in results:
            self._count(result)
        return results  # type: ignore[return-value]

    async def _call_tool(self, tool: Tool, calls: list[ToolCall]) -> list[ToolResult]:
        if tool.stateful:
            # One interpreter or browser session: calls run in the order they were written.
            return [await self._guarded(tool, [call.args]) for call in calls]
        # Stateless: answer repeats from the group cache (or from the same call running for
        # another env of the group), send the rest as one batch.
        keys = [call_key(tool.name, call.arguments) for call in calls]
        results: list[ToolResult | None] = [None] * len(calls)
        waiting: list[tuple[int, Any]] = []
        mine: dict[Any, int] = {}  # key -> the call of this batch that runs it
        for i, key in enumerate(keys):
            if key in mine:
                waiting.append((i, None))
                continue
            hit, running = self.tool_cache.claim(key)
            if hit is not None:
                results[i] = hit
            elif running is not None:
                waiting.append((i, running))
            else:
                mine[key] = i
        owned = list(mine.values())
        try:
            fresh = await self._guarded_many(tool, [calls[i].args for i in owned]) if owned else []
        except BaseException:  # cancelled: never leave the group's other envs waiting
            for i in owned:
                self.tool_cache.finish(keys[i], ToolResult(
                    f"Error: the {tool.name} call was cancelled.", ToolStatus.INFRA_ERROR))
            raise
        for i, result in zip(owned, fresh):
            self.tool_cache.finish(keys[i], result)
            results[i] = result
        for i, running in waiting:
            if running is None:  # a repeat within this turn's own calls
                first = results[mine[keys[i]]]
                results[i] = ToolResult(first.text, first.status, dict(first.data), cached=True)
            else:
                results[i] = await asyncio.wrap_future(running)
        return results  # type: ignore[return-value]

    async def _guarded(self, tool: Tool, args: list[Any]) -> ToolResult:
        return (await self._guarded_many(tool, args, single=True))[0]

    async def _guarded_many(self, tool: Tool, args: list[Any], single: bool = False) -> list[ToolResult]:
        """Call a tool under the timeout; a tool that raises is an infrastructure error."""
        try:
            coro = tool.call(args[0]) if single else tool.call_many(args)
            outcome = await asyncio.wait_for(coro, timeout=self.call_timeout)
            return [outcome] if single else list(outcome)
        except asyncio.TimeoutError:
            text = f"Error: the {tool.name} call timed out after {self.call_timeout:g} s."
            return [ToolResult(text, ToolStatus.TIMEOUT) for _ in args]
        except Exception as exc:  # a bug in a tool must not end the rollout
            text = f"Error: the {tool.name} tool failed ({type(exc).__name__})."
            return [ToolResult(text, ToolStatus.INFRA_ERROR, {"error": str(exc)}) for _ in args]

    def _shown(self, result: ToolResult) -> str:
        text, _ = truncate(result.text, self.max_result_chars)
        return text

    def _count(self, result: ToolResult) -> None:
        metrics = self.episode.metrics
        metrics["tools/calls"] += 1
        metrics["tools/cache_hits"] += int(result.cached)
        metrics["tools/infra_retries"] += result.infra_retries
        if result.status is ToolStatus.TIMEOUT:
            metrics["tools/timeouts"] += 1
        elif result.status is ToolStatus.INFRA_ERROR:
            metrics["tools/infra_errors"] += 1
        elif result.status is not ToolStatus.OK:
            metrics["tools/errors"] += 1

    def _metrics(self, invalid_kind: str | None) -> dict[str, Any]:
        episode = self.episode
        metrics: dict[str, Any] = {
            name: int(episode.metrics[name])
            for name in ("tools/calls", "tools/errors", "tools/timeouts", "tools/infra_errors",
                         "tools/infra_retries", "tools/cache_hits")
        }
        metrics.update({name: value for name, value in episode.metrics.items()
                        if name.count("/") == 2})  # tools/<tool>/calls and tools/<tool>/seconds
        metrics.update({f"invalid/{kind.value}": int(episode.invalid[kind.value]) for kind in InvalidKind})
        metrics.update(turn=episode.turns, answer=episode.answer, invalid_kind=invalid_kind)
        return metrics

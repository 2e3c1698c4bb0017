"""`agentrl/SearchPythonQA-v0`: questions that need both search and python (ARPO's setting).

The SearchQA world (`agentrl.envs.tasks.world`) with numbers in its passages
(`agentrl.envs.tasks.world_numbers`). Most questions ask for a sum or difference of two
numbers found by searching, too large to do in the head of a small model:

    Question: How many years older is Bekora than Lumeva?
    <search> Bekora</search>   -> Doc 1 (Title: Bekora) Bekora is a painter. Bekora was born in Tarvik in 1953. ...
    <search> Lumeva</search>   -> Doc 1 (Title: Lumeva) ... born in Zorin in 1971 ...
    <python> print(1971 - 1953)</python>  -> 18
    <answer> 18</answer>

The rest (`1 - arithmetic_fraction`) are SearchQA's plain 1-2 hop questions, answered by
searching only. The default reward is ARPO's (`agentrl.envs.tasks.qa_reward`): -1 for an
invalid format, 0 for a wrong answer, the answer's F1 otherwise, plus 0.1 when both tools were
used; so the oracle earns 1.1 on arithmetic questions and 1.0 on plain ones.

    gymnasium.make("agentrl/SearchPythonQA-v0")                       # a new world per episode
    gymnasium.make("agentrl/SearchPythonQA-v0", arithmetic_fraction=1.0)
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal, Sequence, TypeVar

import numpy as np

from agentrl.envs.parsing import FormatSpec
from agentrl.envs.tasks.qa_reward import RewardMode, qa_reward
from agentrl.envs.tasks.search_qa import EPISODE_WORLD, FIXED_WORLD, question_task, split_questions
from agentrl.envs.tasks.world import Question, WorldConfig, make_world
from agentrl.envs.tasks.world_numbers import (
    ARITHMETIC_TEMPLATES, ArithmeticQuestion, arithmetic_questions, numbers_index,
)
from agentrl.envs.tool_env import Task, ToolEnv
from agentrl.tools.python import PythonTool
from agentrl.tools.search import SearchArgs, SearchTool
from agentrl.tools.runner import run_sync

Split = Literal["train", "test", "all"]
AnyQuestion = TypeVar("AnyQuestion", Question, ArithmeticQuestion)
Worlds = Literal["fixed", "per_episode"]
SYSTEM_PROMPT = ("Answer the question. Look facts up with search, compute with python, "
                 "one call per turn.\n{tools}")
#: As the search demo writes calls: `<search> Bekora</search>`, names tokenised as in passages.
DEFAULT_CALL_FORMAT: dict[str, Any] = {"name": "xml", "body_prefix": " "}
#: Entity counts of the default name pool (the search demo's): enough for any episode world.
DEFAULT_NAME_POOL = 64


def arithmetic_task(q: ArithmeticQuestion, id_prefix: str = "") -> Task:
    """An arithmetic question as a task, with an oracle plan: search both names, print the
    expression in python, answer."""
    plan = (("search", {"query": q.chain[0]}), ("search", {"query": q.chain[1]}),
            ("python", {"code": q.code}), ("answer", {"answer": q.answer}))
    return Task(prompt=f"Question: {q.question}", answer=q.answer, id=id_prefix + q.id,
                data={"hops": 2, "template": q.template, "arithmetic": True, "expression": q.expression},
                oracle=plan)


def plain_task(q: Question, id_prefix: str = "") -> Task:
    """A SearchQA question as a task (search only), marked as not arithmetic."""
    task = question_task(q, id_prefix)
    task.data["arithmetic"] = False
    return task


class SearchPythonQA(ToolEnv):
    """Questions over an invented world that need search, and mostly also python arithmetic.

    Args:
        arithmetic_fraction: the share of arithmetic questions (search twice, compute, answer);
            the rest are plain SearchQA questions (search, answer). Arithmetic questions pick
            one of the four templates of `agentrl.envs.tasks.world_numbers` uniformly, then a
            question of it; plain ones pick one of SearchQA's templates with at most
            `max_hops` hops uniformly, then a question of it.
        worlds: "per_episode" (default): reset builds a new small world from the episode's
            seed (through the reset RNG), so held-out seeds are new worlds and no answer can be
            memorised; `self.world` is the episode's world, forks keep it. "fixed": one world
            (`world_seed`, `FIXED_WORLD`'s counts), its questions split 80/20 by `split`.
        world_seed, num_countries, num_cities, num_companies, num_people: the generated world
            (counts default to SearchQA's `EPISODE_WORLD` per episode, `FIXED_WORLD` fixed).
        name_pool: name entities from a shared list of this many names (default 64, as the
            search demo); 0 gives fresh random syllables.
        split: "train", "test" or "all" of the fixed world's questions.
        max_hops: the most hops (1 or 2, default 2; 3 fits `max_turns` too) of plain questions.
        reward: "arpo" (default), "em" or "f1" (see `agentrl.envs.tasks.qa_reward`).
        topk: passages per search (default 1: the name's own passage ranks first).
        sandbox_backend, pool: where the interpreter runs: its own sandbox of that backend, or
            one checked out of a `SandboxPool` (the trainer passes its warm pool as `pool`).
        call_format, max_turns, max_tool_calls, call_timeout, render_mode: see `ToolEnv`;
            `max_turns` 5 is the oracle's 4 turns and one spare.
    """

    def __init__(
        self,
        arithmetic_fraction: float = 0.75,
        worlds: Worlds = "per_episode",
        world_seed: int = 0,
        num_countries: int | None = None,
        num_cities: int | None = None,
        num_companies: int | None = None,
        num_people: int | None = None,
        name_pool: int = DEFAULT_NAME_POOL,
        split: Split = "train",
        max_hops: int = 2,
        reward: RewardMode = "arpo",
        topk: int = 1,
        sandbox_backend: str = "auto",
        pool: Any = None,
        call_format: FormatSpec = DEFAULT_CALL_FORMAT,
        max_turns: int = 5,
        max_tool_calls: int = 6,
        call_timeout: float = 30.0,
        render_mode: str | None = None,
    ) -> None:
        if not 0.0 <= arithmetic_fraction <= 1.0:
            raise ValueError(f"arithmetic_fraction must be between 0 and 1, got {arithmetic_fraction}")
        if worlds not in ("fixed", "per_episode"):
            raise ValueError(f"worlds must be 'fixed' or 'per_episode', got {worlds!r}")
        if not 1 <= max_hops <= 3:
            raise ValueError(f"max_hops must be 1, 2 or 3, got {max_hops}")
        if split not in ("train", "test", "all"):
            raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}")
        self.arithmetic_fraction = arithmetic_fraction
        self.per_episode = worlds == "per_episode"
        self.split = split
        self.max_hops = max_hops
        base = EPISODE_WORLD if self.per_episode else FIXED_WORLD
        counts = {name: value for name, value in (
            ("num_countries", num_countries), ("num_cities", num_cities),
            ("num_companies", num_companies), ("num_people", num_people)) if value is not None}
        self._world_config = dataclasses.replace(base, seed=world_seed, name_pool=name_pool, **counts)
        self.world = make_world(self._world_config)  # validates the counts and the name pool
        super().__init__(
            tools=[SearchTool(numbers_index(self._world_config), topk=topk),
                   PythonTool(pool, backend=sandbox_backend, timeout=5.0)],
            tasks=self._next_task,
            reward_fn=qa_reward(reward),
            call_format=call_format,
            max_turns=max_turns,
            max_tool_calls=max_tool_calls,
            max_calls_per_turn=1,
            call_timeout=call_timeout,
            system_prompt=SYSTEM_PROMPT,
            render_mode=render_mode,
        )

    def _next_task(self, rng: np.random.Generator) -> Task:
        """The episode's question, drawn with the seeded reset RNG (per episode: in a world
        built from it). The search tool is replaced, not changed in place, because forks of
        earlier episodes share the old one."""
        config, id_prefix = self._world_config, ""
        if self.per_episode:
            world_seed = int(rng.integers(2**62))
            config = dataclasses.replace(config, seed=world_seed)
            id_prefix = f"w{world_seed}:"
            self.world = make_world(config)
            search = self.tools["search"]
            self.tools = {**self.tools, "search": SearchTool(numbers_index(config), topk=search.topk)}
        if rng.random() < self.arithmetic_fraction:
            arithmetic = self._questions(arithmetic_questions(config), config)
            return arithmetic_task(_uniform_by_template(arithmetic, ARITHMETIC_TEMPLATES, rng), id_prefix)
        plain = [q for q in self._questions(self.world.questions(), config) if q.hops <= self.max_hops]
        templates = tuple(dict.fromkeys(q.template for q in plain))
        return plain_task(_uniform_by_template(plain, templates, rng), id_prefix)

    def _questions(self, questions: list[AnyQuestion], config: WorldConfig) -> list[AnyQuestion]:
        """All of a per-episode world's questions, or the fixed world's split of them."""
        return questions if self.per_episode else split_questions(questions, self.split, config.seed)

    def oracle_transcript(self) -> list[tuple[str, str]]:
        """The oracle episode as playing it would show it, without starting a sandbox (for the
        tiny model's tokenizer corpus: thousands of episodes). The python call prints the
        answer, so its result is the answer; searches run on the in-process index."""
        if self.episode is None:
            raise RuntimeError("oracle_transcript() called before reset()")
        messages: list[tuple[str, str]] = []
        for name, arguments in self.episode.task.oracle:
            if name == "answer":
                messages.append(("assistant", self.format.render_answer(str(arguments["answer"]))))
                break
            messages.append(("assistant", self.format.render_call(name, arguments, self.tools)))
            if name == "search":
                result = run_sync(self.tools["search"].call(SearchArgs(**arguments))).text
            else:
                result = str(self.episode.task.answer)
            messages.append((self.observation_role, self.format.render_results([result])))
        return messages


def _uniform_by_template(questions: Sequence[AnyQuestion], templates: tuple[str, ...],
                         rng: np.random.Generator) -> AnyQuestion:
    """A template uniformly among those with questions, then one of its questions uniformly."""
    present = [t for t in templates if any(q.template == t for q in questions)]
    if not present:
        raise ValueError("this world has no question of the templates asked; use a larger world")
    template = present[int(rng.integers(len(present)))]
    chosen = [q for q in questions if q.template == template]
    return chosen[int(rng.integers(len(chosen)))]

"""`agentrl/SearchQA-v0`: answer multi-hop questions by searching a corpus.

By default the corpus and questions come from a generated world of invented entities (see
`agentrl.envs.tasks.world`), so the agent must search: one search per hop, then
`<answer>name</answer>`. With `worlds="per_episode"` every episode seed builds its own small
world, so training and held-out seeds never share a world and no answer can be memorised:

    gymnasium.make("agentrl/SearchQA-v0", worlds="per_episode")

With real data, point it at Search-R1 / FlashRAG files:

    gymnasium.make("agentrl/SearchQA-v0", corpus_path="wiki.jsonl", qa_path="nq_train.jsonl",
                   index_dir="runs/index/wiki")          # BM25 index built once, then mmap'ed
    gymnasium.make("agentrl/SearchQA-v0", qa_path="nq_train.jsonl",
                   retriever_url="http://127.0.0.1:8000")  # a Search-R1 /retrieve server

Reward modes: "em" (default), "f1", "arpo" (see `agentrl.envs.tasks.qa_reward`).
"""

from __future__ import annotations

import dataclasses
import functools
import random
from typing import Callable, Literal

import numpy as np

from agentrl.envs.parsing import FormatSpec
from agentrl.envs.tasks.qa_reward import RewardMode, qa_reward
from agentrl.envs.tasks.world import Question, World, WorldConfig, make_world, name_pool
from agentrl.envs.tool_env import Task, ToolEnv
from agentrl.tools.base import Tool
from agentrl.tools.bm25 import BM25Index
from agentrl.tools.corpus import load_qa_jsonl
from agentrl.tools.retrievers import Retriever, RetrieverClient
from agentrl.tools.python import PythonTool
from agentrl.tools.search import SearchTool

Split = Literal["train", "test", "all"]
Worlds = Literal["fixed", "per_episode"]
QuestionMix = Literal["hops", "templates"]
SYSTEM_PROMPT = "Answer the question. Look facts up with the tools, one call per turn.\n{tools}"
TEST_FRACTION = 0.2
#: Entity counts of the worlds: one large fixed world, or a small one per episode (21 passages;
#: its size does not change the prompt length, only how many names a search can confuse).
FIXED_WORLD = WorldConfig(seed=0, num_countries=4, num_cities=12, num_companies=8, num_people=30)
EPISODE_WORLD = WorldConfig(seed=0, num_countries=3, num_cities=6, num_companies=4, num_people=8)


# Large enough for every group of a rollout batch in per-episode mode (a group's envs reset with
# the same seed, possibly interleaved with other groups).
@functools.lru_cache(maxsize=64)
def world_index(config: WorldConfig) -> BM25Index:
    """The BM25 index of a world's passages (built once per process; milliseconds)."""
    return BM25Index.build(make_world(config).documents())


def split_questions(questions: list[Question], split: Split, seed: int) -> list[Question]:
    """A fixed train/test split (80/20) of the world's questions."""
    order = list(range(len(questions)))
    random.Random(seed).shuffle(order)
    cut = int(len(order) * TEST_FRACTION)
    chosen = {"test": order[:cut], "train": order[cut:], "all": order}[split]
    return [questions[i] for i in sorted(chosen)]


def question_task(q: Question, id_prefix: str = "") -> Task:
    """A question as a task, with an oracle plan: search each hop, then answer."""
    plan = tuple(("search", {"query": name}) for name in q.chain) + (("answer", {"answer": q.answer}),)
    return Task(prompt=f"Question: {q.question}", answer=q.answer, id=id_prefix + q.id,
                data={"hops": q.hops, "template": q.template}, oracle=plan)


def world_tasks(world: World, split: Split = "train", max_hops: int = 3, min_hops: int = 1) -> list[Task]:
    """The world's questions (of one split) as tasks, with their oracle plans."""
    tasks = [question_task(q) for q in split_questions(world.questions(), split, world.config.seed)
             if min_hops <= q.hops <= max_hops]
    if not tasks:
        raise ValueError(f"no questions with {min_hops} to {max_hops} hops in split {split!r}")
    return tasks


def file_tasks(qa_path: str) -> list[Task]:
    """Tasks from a FlashRAG / Search-R1 QA file; the oracle searches the question, then answers."""
    return [
        Task(prompt=f"Question: {ex.question}", answer=list(ex.golden_answers), id=ex.id,
             oracle=(("search", {"query": ex.question}), ("answer", {"answer": ex.golden_answers[0]})))
        for ex in load_qa_jsonl(qa_path)
    ]


class SearchQA(ToolEnv):
    """Multi-hop QA with a search tool.

    Args:
        worlds: where the generated questions come from.
            "fixed" (default): one world (`world_seed`), its questions split 80/20 into
            "train" and "test" by `split`; reset picks a question of the split.
            "per_episode": reset builds a new small world from the episode's seed (through
            the reset RNG) and asks one of its questions: first a number of hops uniformly in
            `min_hops..max_hops`, then a question with that many hops. The same seed always
            gives the same world and question; different seeds give different worlds, so
            held-out seeds (the recipe's `eval.seed_offset`) test the skill of searching and
            copying names, not recall. `split` and `world_seed` do not apply. `self.world` is
            the current episode's world; forks keep it.
        question_mix: how a per-episode world picks its question. "hops" (default): a number
            of hops uniformly, then a question with that many hops; the one 3-hop template is
            then a third of all questions. "templates": a question template uniformly (the
            seven of `agentrl.envs.tasks.world`, those within `min_hops..max_hops`), so each
            relation a question can ask about is asked as often as the others.
        world_seed, num_countries, num_cities, num_companies, num_people: the generated world
            (the counts default to `FIXED_WORLD` or, per episode, to the smaller `EPISODE_WORLD`).
        name_pool: name the entities from a shared list of this many names (`WorldConfig.
            name_pool`) instead of fresh random syllables: per episode, the facts still change
            with every seed, but a small model meets each name often enough to spell it.
        split: "train", "test" or "all" of the fixed world's questions.
        min_hops, max_hops: which questions (1 to 3 hops) to ask.
        reward: "em", "f1" or "arpo".
        topk: passages per search.
        corpus_path, qa_path, index_dir: real data in Search-R1 / FlashRAG jsonl format instead
            of the world; the index is saved to `index_dir` on first use.
        retriever_url: a Search-R1-compatible /retrieve server to search instead of a local index.
        with_python: also give the agent a sandboxed python tool (the ARPO setting, whose
            reward adds 0.1 when both tools are used); `sandbox_backend` picks its backend.
        call_format, max_turns, max_tool_calls, call_timeout, render_mode: see `ToolEnv`.
    """

    def __init__(
        self,
        worlds: Worlds = "fixed",
        world_seed: int = 0,
        num_countries: int | None = None,
        num_cities: int | None = None,
        num_companies: int | None = None,
        num_people: int | None = None,
        name_pool: int | None = None,
        split: Split = "train",
        min_hops: int = 1,
        max_hops: int = 3,
        question_mix: QuestionMix = "hops",
        reward: RewardMode = "em",
        topk: int = 3,
        corpus_path: str | None = None,
        qa_path: str | None = None,
        index_dir: str | None = None,
        retriever_url: str | None = None,
        with_python: bool = False,
        sandbox_backend: str = "auto",
        call_format: FormatSpec = "xml",
        max_turns: int = 5,
        max_tool_calls: int = 6,
        call_timeout: float = 30.0,
        render_mode: str | None = None,
    ) -> None:
        if worlds not in ("fixed", "per_episode"):
            raise ValueError(f"worlds must be 'fixed' or 'per_episode', got {worlds!r}")
        if worlds == "per_episode" and (qa_path is not None or retriever_url is not None):
            raise ValueError("worlds='per_episode' generates its own corpus; it cannot be combined "
                             "with qa_path or retriever_url")
        retriever: Retriever
        tasks: list[Task] | Callable[[np.random.Generator], Task]
        # Retrievers this env opened (an HTTP client, a memory-mapped index), shared with its
        # forks and closed by the last of them; the cached world index is not among them.
        self._owned = _SharedRetrievers()
        if qa_path is not None:
            tasks = file_tasks(qa_path)
            if retriever_url is not None:
                retriever = RetrieverClient(retriever_url)
            elif corpus_path is not None:
                retriever = (BM25Index.load_or_build(index_dir, corpus_path) if index_dir
                             else BM25Index.from_jsonl(corpus_path))
            elif index_dir is not None:
                retriever = BM25Index.load(index_dir)
            else:
                raise ValueError("qa_path needs a corpus: pass corpus_path, index_dir or retriever_url")
        else:
            base = EPISODE_WORLD if worlds == "per_episode" else FIXED_WORLD
            counts = {name: value for name, value in (
                ("num_countries", num_countries), ("num_cities", num_cities),
                ("num_companies", num_companies), ("num_people", num_people),
                ("name_pool", name_pool)) if value is not None}
            config = dataclasses.replace(base, seed=world_seed, **counts)
            self.world = make_world(config)
            if worlds == "per_episode":
                if not 1 <= min_hops <= max_hops <= 3:
                    raise ValueError(f"need 1 <= min_hops <= max_hops <= 3, got {min_hops} and {max_hops}")
                if question_mix not in ("hops", "templates"):
                    raise ValueError(f"question_mix must be 'hops' or 'templates', got {question_mix!r}")
                self._episode_world = config
                self._hops = (min_hops, max_hops)
                self._question_mix = question_mix
                tasks = self._episode_task
            else:
                tasks = world_tasks(self.world, split, max_hops=max_hops, min_hops=min_hops)
            retriever = RetrieverClient(retriever_url) if retriever_url else world_index(config)
        if qa_path is not None or retriever_url:
            self._owned.retrievers.append(retriever)
        tools: list[Tool] = [SearchTool(retriever, topk=topk)]
        if with_python:
            tools.append(PythonTool(backend=sandbox_backend))
        super().__init__(
            tools=tools,
            tasks=tasks,
            reward_fn=qa_reward(reward),
            call_format=call_format,
            max_turns=max_turns,
            max_tool_calls=max_tool_calls,
            call_timeout=call_timeout,
            system_prompt=SYSTEM_PROMPT,
            render_mode=render_mode,
        )

    def _episode_task(self, rng: np.random.Generator) -> Task:
        """Per-episode worlds: build the world of this episode, point search at it, ask a question.

        Called by `ToolEnv.reset` with the seeded RNG. The search tool is replaced, not
        changed in place, because forks of earlier episodes share the old one.
        """
        world_seed = int(rng.integers(2**62))
        config = dataclasses.replace(self._episode_world, seed=world_seed)
        self.world = make_world(config)
        search = self.tools["search"]
        self.tools = {**self.tools, "search": SearchTool(world_index(config), topk=search.topk)}
        asked = [q for q in self.world.questions() if self._hops[0] <= q.hops <= self._hops[1]]
        if self._question_mix == "templates":
            templates = sorted({q.template for q in asked})
            template = templates[int(rng.integers(len(templates)))]
            questions = [q for q in asked if q.template == template]
        else:
            hops = int(rng.integers(self._hops[0], self._hops[1] + 1))
            questions = [q for q in asked if q.hops == hops]
        return question_task(questions[int(rng.integers(len(questions)))], id_prefix=f"w{world_seed}:")

    def mistaken_action(self) -> str:
        """A search for a wrong name where the oracle searches the right one (for SFT
        demonstrations of recovering from a failed search, `sft.mistake_rate`).

        The wrong name is the error a small policy makes most: another name of the shared
        name pool with the same first letter that is not in this world (with `name_pool`), or
        else the right name with a letter dropped; either way the search finds no passage.
        Raises NotImplementedError where the oracle's next step is not a search, or where the
        turn budget leaves no room to search again and finish the plan; the demonstration
        then plays the oracle.
        """
        episode = self.episode
        if episode is None:
            raise RuntimeError("mistaken_action() called before reset()")
        plan = episode.task.oracle
        step = episode.turns - episode.mistakes
        if step >= len(plan) or plan[step][0] != "search":
            raise NotImplementedError("SearchQA makes mistakes only in place of a search")
        if self.max_turns - episode.turns <= len(plan) - step:
            raise NotImplementedError("no turn left to recover from a mistake")
        wrong = self._wrong_name(str(plan[step][1]["query"]))
        episode.mistakes += 1
        return self.format.render_call("search", {"query": wrong}, self.tools)

    def _wrong_name(self, name: str) -> str:
        world = getattr(self, "world", None)
        if world is not None and world.config.name_pool:
            present = set(world.countries + world.cities + world.companies + world.people)
            absent = [n for n in name_pool(world.config.name_pool) if n not in present]
            alike = [n for n in absent if n[0] == name[:1]] or absent
            if alike:
                return alike[int(self.np_random.integers(len(alike)))]
        if len(name) < 3:
            return name + name[-1:]
        cut = 1 + int(self.np_random.integers(len(name) - 2))  # keep the first and last letters
        return name[:cut] + name[cut + 1:]

    def fork(self) -> "SearchQA":
        twin = super().fork()
        self._owned.users += 1
        twin._closed = False
        return twin

    def close(self) -> None:
        super().close()
        if not getattr(self, "_closed", False):
            self._closed = True
            self._owned.release()


class _SharedRetrievers:
    """Retrievers held by an env and its forks; the last user to close releases them."""

    def __init__(self) -> None:
        self.retrievers: list[RetrieverClient | BM25Index] = []
        self.users = 1

    def release(self) -> None:
        self.users -= 1
        if self.users == 0:
            for retriever in self.retrievers:
                retriever.close()

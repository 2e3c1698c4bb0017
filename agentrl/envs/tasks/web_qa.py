"""`agentrl/WebQA-v0`: the SearchQA world as linked web pages, solved with search and a browser.

Search results give only each page's title and URL; the facts are on the pages, served by a
`WorldWebServer` on loopback. A perfect agent searches the first entity, opens its page, follows
the link to each next entity by its number, and answers:

    <search>Dilur</search>  ->  Doc 1 (Title: Dilur) http://127.0.0.1:PORT/wiki/Dilur
    <open>http://127.0.0.1:PORT/wiki/Dilur</open>  ->  L3: Dilur works for Druse [2].
    <open>2</open>  ->  L2: Druse is a company based in Tosur [1].
    <answer>Tosur</answer>

The browser may open only this server (`allow_hosts=["127.0.0.1:PORT"]`).
"""

from __future__ import annotations

from typing import Any

from agentrl.envs.parsing import FormatSpec
from agentrl.envs.tasks.qa_reward import RewardMode, qa_reward
from agentrl.envs.tasks.search_qa import Split, split_questions, world_index
from agentrl.envs.tasks.world import World, WorldConfig, make_world
from agentrl.envs.tasks.world_web import WorldWebServer
from agentrl.envs.tool_env import Task, ToolEnv
from agentrl.tools.browser import Browser
from agentrl.tools.corpus import Hit
from agentrl.tools.search import SearchTool

SYSTEM_PROMPT = "Answer the question. Search, then read web pages; one call per turn.\n{tools}"


def web_tasks(world: World, server: WorldWebServer, split: Split, min_hops: int, max_hops: int) -> list[Task]:
    tasks = []
    for q in split_questions(world.questions(), split, world.config.seed):
        if not min_hops <= q.hops <= max_hops:
            continue
        plan: list[tuple[str, dict[str, Any]]] = [
            ("search", {"query": q.chain[0]}), ("open", {"target": server.url_for(q.chain[0])})
        ]
        for here, there in zip(q.chain, q.chain[1:]):
            links = [link for _, link, _ in world.facts(here) if link]
            plan.append(("open", {"target": str(links.index(there) + 1)}))
        plan.append(("answer", {"answer": q.answer}))
        tasks.append(Task(prompt=f"Question: {q.question}", answer=q.answer, id=q.id,
                          data={"hops": q.hops, "template": q.template}, oracle=tuple(plan)))
    if not tasks:
        raise ValueError(f"no questions with {min_hops} to {max_hops} hops in split {split!r}")
    return tasks


class WebQA(ToolEnv):
    """Multi-hop QA over a local website with `search`, `open`, `scroll` and `find`.

    Args: as `SearchQA` for the world, split, hops and reward; `lines_per_page` for the browser.
    """

    def __init__(
        self,
        world_seed: int = 0,
        num_countries: int = 4,
        num_cities: int = 12,
        num_companies: int = 8,
        num_people: int = 30,
        split: Split = "train",
        min_hops: int = 1,
        max_hops: int = 3,
        reward: RewardMode = "em",
        lines_per_page: int = 20,
        call_format: FormatSpec = "xml",
        max_turns: int = 7,
        max_tool_calls: int = 8,
        call_timeout: float = 30.0,
        render_mode: str | None = None,
    ) -> None:
        config = WorldConfig(world_seed, num_countries, num_cities, num_companies, num_people)
        self.world = make_world(config)
        self.server = WorldWebServer.acquire(self.world)
        self._released = False
        server = self.server

        def format_hits(hits: list[Hit]) -> str:
            lines = [f"Doc {i} (Title: {h.document.title}) {server.url_for(h.document.title)}"
                     for i, h in enumerate(hits, start=1)]
            return "\n".join(lines) or "No results."

        browser = Browser(allow_hosts=[server.host], lines_per_page=lines_per_page)
        super().__init__(
            tools=[SearchTool(world_index(config), topk=3, formatter=format_hits), *browser.tools()],
            tasks=web_tasks(self.world, server, split, min_hops, max_hops),
            reward_fn=qa_reward(reward),
            call_format=call_format,
            max_turns=max_turns,
            max_tool_calls=max_tool_calls,
            call_timeout=call_timeout,
            system_prompt=SYSTEM_PROMPT,
            render_mode=render_mode,
        )

    def fork(self) -> "WebQA":
        twin = super().fork()
        twin.server = WorldWebServer.acquire(self.world)  # the fork holds its own reference
        twin._released = False
        return twin

    def close(self) -> None:
        super().close()
        if not self._released:
            self._released = True
            self.server.release()

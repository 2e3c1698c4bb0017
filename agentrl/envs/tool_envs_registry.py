"""Registration of the built-in tool environments (SearchQA, WebQA, Code, Calc, SearchPythonQA)."""

from __future__ import annotations

from agentrl.envs.registry import register

register(
    "agentrl/SearchQA-v0",
    "agentrl.envs.tasks.search_qa:SearchQA",
    "Multi-hop QA (1-3 hops) over an invented world with a BM25 search tool; or your own "
    "Search-R1/FlashRAG corpus and QA files.",
)
register(
    "agentrl/WebQA-v0",
    "agentrl.envs.tasks.web_qa:WebQA",
    "The SearchQA world as linked web pages on a loopback server, solved with search and a browser.",
)
register(
    "agentrl/Code-v0",
    "agentrl.envs.tasks.code:Code",
    "Write a small Python function that passes hidden unit tests, trying code in a sandboxed "
    "interpreter; reward = fraction of tests passed.",
)
register(
    "agentrl/Calc-v0",
    "agentrl.envs.tasks.calc:Calc",
    "Arithmetic too large for the head (5-digit products), solved by calling python.",
)
register(
    "agentrl/SearchPythonQA-v0",
    "agentrl.envs.tasks.search_python_qa:SearchPythonQA",
    "Questions over an invented world with numbers (years, head counts, populations): search two "
    "facts, compute with python, answer; ARPO's search + python setting.",
)

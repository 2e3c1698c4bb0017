"""Benchmark: search throughput (bm25s vs rank_bm25) and tool-call latency per tool.

    python benchmarks/search_tools.py                       # 100k passages, writes runs/bench/search_tools.json
    python benchmarks/search_tools.py --passages 20000 --out /tmp/bench.json

1. A synthetic corpus of `--passages` passages (Zipf-distributed invented words, 30-70 words
   each) and queries of 3-5 words drawn from random passages.
2. Index build time, and queries/s for bm25s (one batched call; and one query per call) and for
   rank_bm25's BM25Okapi (one query per call: it has no batch API), all single-threaded.
3. Latency of one tool call through the agentrl tool API: `search` over the same index,
   `open` of a page on a loopback HTTP server, and `python` in a sandbox (skipped if no sandbox
   backend is available).

Results are a JSON file and a printed table; docs/tools.md keeps the latest numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import random
import statistics
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from agentrl.tools.bm25 import BM25Index, _tokenize
from agentrl.tools.corpus import Document


def make_corpus(n: int, seed: int = 0, vocab_size: int = 30_000) -> list[Document]:
    rng = np.random.default_rng(seed)
    syllables = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]
    words = list({"".join(rng.choice(syllables, size=int(rng.integers(2, 4)))) for _ in range(vocab_size * 2)})
    words = words[:vocab_size]
    # Zipf-like word frequencies, as in natural text.
    weights = 1.0 / np.arange(1, len(words) + 1)
    weights /= weights.sum()
    lengths = rng.integers(30, 71, size=n)
    ids = rng.choice(len(words), size=int(lengths.sum()), p=weights)
    docs, start = [], 0
    for i, length in enumerate(lengths):
        chunk = ids[start:start + length]
        start += length
        docs.append(Document(str(i), words[chunk[0]].capitalize(), " ".join(words[j] for j in chunk[1:])))
    return docs


def make_queries(docs: list[Document], n: int, seed: int = 1) -> list[str]:
    rng = random.Random(seed)
    queries = []
    for _ in range(n):
        words = rng.choice(docs).text.split()
        queries.append(" ".join(rng.sample(words, k=min(len(words), rng.randint(3, 5)))))
    return queries


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    began = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - began


def latency_stats(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "calls": len(samples),
        "p50_ms": 1000 * statistics.median(ordered),
        "p95_ms": 1000 * ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))],
        "mean_ms": 1000 * statistics.fmean(ordered),
    }


def bench_search(docs: list[Document], queries: list[str], single: int, rank_queries: int) -> dict[str, Any]:
    import bm25s

    out: dict[str, Any] = {}
    # Tokenize once for both engines, so index build times compare the indexing alone.
    tokenized, tokenize_s = timed(lambda: _tokenize([f"{d.title} {d.text}" for d in docs]))
    out["tokenize_s"] = tokenize_s
    model = bm25s.BM25()
    _, seconds = timed(lambda: model.index(tokenized, show_progress=False))
    index = BM25Index(model, docs)
    out["bm25s"] = {"index_s": seconds}
    _, seconds = timed(lambda: index.retrieve(queries, topk=3))
    out["bm25s"]["batched_qps"] = len(queries) / seconds
    _, seconds = timed(lambda: [index.retrieve([q], topk=3) for q in queries[:single]])
    out["bm25s"]["single_qps"] = single / seconds

    try:
        from rank_bm25 import BM25Okapi
    except ImportError:
        out["rank_bm25"] = {"skipped": "pip install rank_bm25"}
        return {"search": out, "index": index}
    okapi, seconds = timed(lambda: BM25Okapi(tokenized))
    out["rank_bm25"] = {"index_s": seconds}
    query_tokens = _tokenize(queries[:rank_queries])
    _, seconds = timed(lambda: [np.argsort(-okapi.get_scores(q))[:3] for q in query_tokens])
    out["rank_bm25"]["single_qps"] = rank_queries / seconds
    out["rank_bm25"]["batched_qps"] = out["rank_bm25"]["single_qps"]  # no batch API: a loop
    return {"search": out, "index": index}


async def _call_latencies(tool: Any, args_list: list[Any]) -> list[float]:
    samples = []
    for args in args_list:
        began = time.perf_counter()
        result = await tool.call(args)
        samples.append(time.perf_counter() - began)
        if not result.ok:
            raise RuntimeError(f"{tool.name} failed during the benchmark: {result.text}")
    return samples


def bench_tools(index: BM25Index, queries: list[str], calls: int) -> dict[str, Any]:
    from agentrl.envs.tasks.world import WorldConfig, make_world
    from agentrl.envs.tasks.world_web import WorldWebServer
    from agentrl.tools.browser import Browser, OpenArgs
    from agentrl.tools.python import PythonArgs, PythonTool
    from agentrl.tools.search import SearchArgs, SearchTool

    out: dict[str, Any] = {}
    search = SearchTool(index, topk=3)
    out["search (bm25s, 100k-passage index)" if len(index) == 100_000 else f"search (bm25s, {len(index)} passages)"] = \
        latency_stats(asyncio.run(_call_latencies(search, [SearchArgs(query=q) for q in queries[:calls]])))

    world = make_world(WorldConfig())
    server = WorldWebServer.acquire(world)
    browser = Browser(allow_hosts=[server.host])
    try:
        open_tool = browser.tools()[0]
        targets = [OpenArgs(target=server.url_for(name)) for name in (world.people * 10)[:calls]]
        out["open (browser, loopback page)"] = latency_stats(asyncio.run(_call_latencies(open_tool, targets)))
    finally:
        browser.close()
        server.release()

    try:
        from agentrl.sandboxes import resolve_backend

        backend = resolve_backend("auto")
    except Exception as exc:  # no sandbox here: say so in the results
        out["python (sandbox)"] = {"skipped": str(exc).splitlines()[0]}
        return out
    tool = PythonTool(backend=backend)
    try:
        asyncio.run(tool.call(PythonArgs(code="x = 0")))  # start the sandbox outside the timing
        codes = [PythonArgs(code=f"x += {i}\nprint(x * 2)") for i in range(calls)]
        out[f"python ({backend} sandbox, warm)"] = latency_stats(asyncio.run(_call_latencies(tool, codes)))
    finally:
        tool.close()
    return out


def print_table(results: dict[str, Any]) -> None:
    search = results["search"]
    print(f"\nSearch over {results['config']['passages']} passages (top-3, single thread; "
          f"tokenizing the corpus took {search['tokenize_s']:.1f} s, not included below)")
    print("| engine | index build (s) | batched queries/s | single-query queries/s |")
    print("|---|---|---|---|")
    for engine, row in search.items():
        if not isinstance(row, dict):
            continue
        if "skipped" in row:
            print(f"| {engine} | skipped: {row['skipped']} | | |")
            continue
        print(f"| {engine} | {row['index_s']:.1f} | {row['batched_qps']:,.0f} | {row['single_qps']:,.0f} |")
    print("\nTool-call latency (agentrl tool API, one call at a time)")
    print("| tool | calls | p50 (ms) | p95 (ms) |")
    print("|---|---|---|---|")
    for tool, row in results["tools"].items():
        if "skipped" in row:
            print(f"| {tool} | skipped: {row['skipped']} | | |")
        else:
            print(f"| {tool} | {row['calls']} | {row['p50_ms']:.2f} | {row['p95_ms']:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--passages", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=1000, help="queries for the batched bm25s run")
    parser.add_argument("--single", type=int, default=200, help="one-query calls timed for bm25s")
    parser.add_argument("--rank-queries", type=int, default=20, help="queries timed for rank_bm25 (slow)")
    parser.add_argument("--calls", type=int, default=50, help="calls per tool for the latency table")
    parser.add_argument("--out", default="runs/bench/search_tools.json")
    args = parser.parse_args()

    docs, seconds = timed(lambda: make_corpus(args.passages))
    print(f"generated {len(docs)} passages in {seconds:.1f} s")
    queries = make_queries(docs, args.queries)
    searched = bench_search(docs, queries, args.single, args.rank_queries)
    results = {
        "benchmark": "search_tools",
        "config": vars(args),
        "machine": {"python": platform.python_version(), "cpu": platform.processor() or platform.machine()},
        "search": searched["search"],
        "tools": bench_tools(searched["index"], queries, args.calls),
    }
    results["config"]["passages"] = len(docs)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print_table(results)
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()

"""Search against real backends: a bm25s index on disk, and /retrieve servers on loopback."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from agentrl.tools.bm25 import BM25Index
from agentrl.tools.corpus import Document, load_corpus_jsonl, load_qa_jsonl, write_corpus_jsonl
from agentrl.tools.retriever_server import RetrieverServer
from agentrl.tools.retrievers import RetrieverClient
from agentrl.tools.retry import RetryPolicy
from agentrl.tools.search import SearchArgs, SearchTool
from agentrl.tools.base import ToolStatus

DOCS = [
    Document("d0", "Lumeva", "Lumeva is a city in Oskaria. It lies on a river."),
    Document("d1", "Bekora Talim", "Bekora Talim is a painter. Bekora Talim was born in Lumeva."),
    Document("d2", "Zantrix", "Zantrix is a company founded by Bekora Talim."),
    Document("d3", "Oskaria", "Oskaria is a country. Its capital is Lumeva."),
]
FAST = RetryPolicy(attempts=3, base_delay=0.01, max_delay=0.02)


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    directory = tmp_path_factory.mktemp("index")
    BM25Index.build(DOCS).save(directory)
    loaded = BM25Index.load(directory)  # memory-mapped
    yield loaded
    loaded.close()


def test_saved_index_is_memory_mapped_and_batched(index):
    assert len(index) == 4
    results = index.retrieve(["Zantrix company", "painter Bekora", "nothing matches this"], topk=2)
    assert [h.document.id for h in results[0]][0] == "d2"
    assert results[1][0].document.title == "Bekora Talim"
    assert results[2] == []  # no term in common: no hits rather than arbitrary ones


def test_search_tool_numbers_passages_with_titles(index):
    tool = SearchTool(index, topk=2)
    result = asyncio.run(tool.call(SearchArgs(query="Zantrix")))
    assert result.status is ToolStatus.OK
    assert result.text.splitlines()[0] == "Doc 1 (Title: Zantrix) Zantrix is a company founded by Bekora Talim."
    batch = asyncio.run(tool.call_many([SearchArgs(query="Oskaria capital"), SearchArgs(query="zzz")]))
    assert batch[0].text.startswith("Doc 1 (Title: Oskaria)") and batch[1].text == "No results."
    assert tool.openai_spec()["function"]["parameters"]["required"] == ["query"]


def test_corpus_and_qa_loaders_read_search_r1_rows(tmp_path):
    path = tmp_path / "corpus.jsonl"
    path.write_text(json.dumps({"id": "7", "contents": '"Lumeva"\nLumeva is a city.'}) + "\n")
    assert load_corpus_jsonl(path) == [Document("7", "Lumeva", "Lumeva is a city.")]
    write_corpus_jsonl(DOCS, tmp_path / "round.jsonl")
    assert load_corpus_jsonl(tmp_path / "round.jsonl") == DOCS
    qa = tmp_path / "qa.jsonl"
    qa.write_text(json.dumps({"question": "Where?", "golden_answers": ["Lumeva", "lumeva city"]}) + "\n")
    assert load_qa_jsonl(qa)[0].golden_answers == ("Lumeva", "lumeva city")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "no answers"}\n')
    with pytest.raises(ValueError, match="bad.jsonl:1: a QA row needs"):
        load_qa_jsonl(bad)


def test_retriever_server_and_client_match_local_index(index):
    with RetrieverServer(index) as server:
        client = RetrieverClient(server.url)
        remote = client.retrieve(["Zantrix", "Oskaria capital"], topk=2)
        local = index.retrieve(["Zantrix", "Oskaria capital"], topk=2)
        assert [[h.document for h in r] for r in remote] == [[h.document for h in r] for r in local]
        assert remote[0][0].score == pytest.approx(local[0][0].score)

        raw = httpx.post(server.url + "/retrieve", json={"queries": ["Zantrix"], "topk": 1, "return_scores": False})
        assert raw.json() == {"result": [[{"id": "d2", "contents": "Zantrix\nZantrix is a company founded by Bekora Talim."}]]}
        scored = httpx.post(server.url + "/retrieve", json={"queries": ["Zantrix"], "topk": 1, "return_scores": True})
        assert set(scored.json()["result"][0][0]) == {"document", "score"}
        # The client reads score-less answers too.
        bad = httpx.post(server.url + "/retrieve", json={"queries": "x", "topk": 0})
        assert bad.status_code == 400 and "topk" in bad.json()["error"]
        client.close()


def test_retriever_server_answers_a_single_query_as_skyrl_sends_it(index):
    """SkyRL's search tool posts `{"query": "...", "topk": k, "return_scores": true}`: the answer
    is a one-query batch, the same as for `{"queries": ["..."]}`."""
    with RetrieverServer(index) as server:
        single = httpx.post(server.url + "/retrieve", json={"query": "Zantrix", "topk": 2, "return_scores": True})
        batch = httpx.post(server.url + "/retrieve", json={"queries": ["Zantrix"], "topk": 2, "return_scores": True})
        assert single.status_code == 200, single.text
        assert single.json() == batch.json()
        assert single.json()["result"][0][0]["document"]["id"] == "d2"
        for bad, named in (({"query": ["Zantrix"]}, '"query" must be a string'),
                           ({"query": "Zantrix", "queries": ["Zantrix"]}, 'not both'),
                           ({"topk": 2}, '"queries"')):
            answer = httpx.post(server.url + "/retrieve", json=bad)
            assert answer.status_code == 400 and named in answer.json()["error"], (bad, answer.text)


class _FlakyHandler(BaseHTTPRequestHandler):
    failures_left = 2

    def do_POST(self):  # noqa: N802
        self.rfile.read(int(self.headers["Content-Length"]))
        if type(self).failures_left > 0:
            type(self).failures_left -= 1
            self.send_response(503)
            self.end_headers()
            return
        body = json.dumps({"result": [[{"document": {"id": "1", "contents": "T\nbody"}, "score": 1.0}]]}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_server_errors_are_retried_with_backoff_and_counted():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FlakyHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        tool = SearchTool(RetrieverClient(url), retry=FAST)
        result = asyncio.run(tool.call(SearchArgs(query="q")))
        assert result.status is ToolStatus.OK and result.infra_retries == 2
        assert result.text == "Doc 1 (Title: T) body"
    finally:
        server.shutdown()
        server.server_close()


def test_server_down_is_an_infra_error_result_not_an_exception():
    with RetrieverServer(BM25Index.build(DOCS)) as server:
        url = server.url
    tool = SearchTool(RetrieverClient(url, timeout=1.0), retry=FAST)  # the server is closed now
    result = asyncio.run(tool.call(SearchArgs(query="q")))
    assert result.status is ToolStatus.INFRA_ERROR and result.infra_retries == 2
    assert "unavailable" in result.text


def test_serve_retriever_command_builds_and_serves_an_index(tmp_path):
    corpus = tmp_path / "corpus.jsonl"
    write_corpus_jsonl(DOCS, corpus)
    proc = subprocess.Popen(
        [sys.executable, "-c", "from agentrl.tools.cli import app; app()", "serve-retriever",
         "--corpus", str(corpus), "--index", str(tmp_path / "idx"), "--port", "0"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        url = None
        for line in proc.stdout:
            if line.startswith("serving"):
                url = line.split(" at ")[1].split()[0]
                break
        assert url is not None, "the server did not start"
        hits = RetrieverClient(url).retrieve(["Oskaria"], topk=1)
        assert hits[0][0].document.title == "Oskaria"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_dense_retriever_when_installed():
    pytest.importorskip("sentence_transformers")
    pytest.skip("no embedding model is available offline; DenseRetriever needs a local model path")

"""Serve any retriever through the Search-R1 `/retrieve` HTTP API (stdlib only).

    with RetrieverServer(BM25Index.load("runs/index/world"), port=8000) as server:
        client = RetrieverClient(server.url)

Request `{"queries": [...], "topk": 3, "return_scores": true}`; response
`{"result": [[{"document": {"id", "contents"}, "score": s}, ...], ...]}`, one list per query; with
`"return_scores": false` each item is the bare document `{"id", "contents"}`, as in Search-R1's
own server. A single `{"query": "..."}` (the form SkyRL's search env sends) is a batch of one
and gets the same answer as `{"queries": ["..."]}`. `agentrl serve-retriever` runs it from the command line.
"""

from __future__ import annotations

import json
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from agentrl.tools.retrievers import Retriever

MAX_QUERIES = 1024
MAX_TOPK = 100


def retrieve_response(retriever: Retriever, request: dict[str, Any]) -> dict[str, Any]:
    """Answer one decoded `/retrieve` request (raises ValueError on a bad request)."""
    if "query" in request:  # the single-query form; the answer is a batch of one
        if "queries" in request:
            raise ValueError('give "queries" (a list) or "query" (one string), not both')
        if not isinstance(request["query"], str):
            raise ValueError('"query" must be a string (several go in "queries", a list)')
        queries = [request["query"]]
    else:
        queries = request.get("queries")
    if isinstance(queries, str):
        queries = [queries]
    if not isinstance(queries, list) or not all(isinstance(q, str) for q in queries):
        raise ValueError('"queries" must be a list of strings (or "query" one string)')
    if len(queries) > MAX_QUERIES:
        raise ValueError(f"at most {MAX_QUERIES} queries per request")
    topk = request.get("topk", 3)
    if not isinstance(topk, int) or not 1 <= topk <= MAX_TOPK:
        raise ValueError(f'"topk" must be an integer in [1, {MAX_TOPK}]')
    with_scores = bool(request.get("return_scores", True))
    result = []
    for hits in retriever.retrieve(queries, topk):
        if with_scores:
            result.append([{"document": h.document.to_row(), "score": h.score} for h in hits])
        else:
            result.append([h.document.to_row() for h in hits])
    return {"result": result}


class _Handler(BaseHTTPRequestHandler):
    server: "_Server"

    def do_POST(self) -> None:  # noqa: N802 - the stdlib's naming
        if self.path.rstrip("/") != "/retrieve":
            self._send(HTTPStatus.NOT_FOUND, {"error": f"unknown path {self.path}; POST /retrieve"})
            return
        try:
            length = int(self.headers.get("Content-Length", "0"))
            request = json.loads(self.rfile.read(length) or b"{}")
            if not isinstance(request, dict):
                raise ValueError("the request body must be a JSON object")
            body = retrieve_response(self.server.retriever, request)
        except ValueError as exc:
            self._send(HTTPStatus.BAD_REQUEST, {"error": str(exc)})
            return
        except Exception as exc:  # the retriever failed: a server error the client may retry
            self._send(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": f"{type(exc).__name__}: {exc}"})
            return
        self._send(HTTPStatus.OK, body)

    def _send(self, status: HTTPStatus, body: dict[str, Any]) -> None:
        data = json.dumps(body, ensure_ascii=False).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:  # keep test and training logs quiet
        if self.server.verbose:
            super().log_message(format, *args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], retriever: Retriever, verbose: bool) -> None:
        super().__init__(address, _Handler)
        self.retriever = retriever
        self.verbose = verbose


class RetrieverServer:
    """A `/retrieve` server on a background thread; the owner closes it (or uses `with`).

    `port=0` picks a free port; `url` says where it listens.
    """

    def __init__(self, retriever: Retriever, host: str = "127.0.0.1", port: int = 0, verbose: bool = False) -> None:
        self._server = _Server((host, port), retriever, verbose)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "RetrieverServer":
        if self._thread is None:
            self._thread = threading.Thread(target=self._server.serve_forever, name="retriever-server", daemon=True)
            self._thread.start()
        return self

    def serve_forever(self) -> None:
        """Serve on the calling thread until interrupted (Ctrl-C), then close."""
        try:
            self._server.serve_forever()
        finally:
            self._server.server_close()

    def close(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join()
            self._thread = None
        self._server.server_close()

    def __enter__(self) -> "RetrieverServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

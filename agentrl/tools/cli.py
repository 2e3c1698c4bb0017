"""Command-line entry points of the tools room (mounted by `agentrl.cli`).

`agentrl serve-retriever` serves a local BM25 index through the Search-R1 `/retrieve` API, so
any Search-R1-compatible trainer or agentrl's `RetrieverClient` can use it:

    agentrl serve-retriever --corpus corpus.jsonl --index runs/index/mycorpus --port 8000
    curl -s localhost:8000/retrieve -d '{"queries": ["who founded Zantrix"], "topk": 3}'
    curl -s localhost:8000/retrieve -d '{"query": "who founded Zantrix"}'   # one query (SkyRL's form)
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from agentrl.tools.bm25 import BM25Index
from agentrl.tools.retriever_server import RetrieverServer

app = typer.Typer(help="Tool servers.", no_args_is_help=True)


@app.callback()
def _tools() -> None:
    """Tool servers."""  # a callback keeps `serve-retriever` a named subcommand


def serve_retriever(
    index: Path = typer.Option(..., help="Index directory (built from --corpus if it does not exist yet)."),
    corpus: Optional[Path] = typer.Option(None, help="Corpus jsonl ({'id', 'contents'} rows) to index."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on."),
    port: int = typer.Option(8000, help="Port to listen on (0 picks a free one)."),
    verbose: bool = typer.Option(False, help="Log every request."),
) -> None:
    """Serve a BM25 index through the Search-R1 /retrieve API until Ctrl-C."""
    if not (index / "documents.jsonl").exists():
        if corpus is None:
            raise typer.BadParameter(f"no index in {index}; pass --corpus FILE.jsonl to build it", param_hint="--index")
        typer.echo(f"indexing {corpus} into {index} ...")
        BM25Index.from_jsonl(corpus).save(index)
    retriever = BM25Index.load(index)
    server = RetrieverServer(retriever, host=host, port=port, verbose=verbose)
    typer.echo(f"serving {len(retriever)} documents at {server.url}/retrieve (Ctrl-C to stop)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        typer.echo("stopped")
    finally:
        retriever.close()


app.command("serve-retriever")(serve_retriever)

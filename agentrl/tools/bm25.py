"""A BM25 index over a local corpus, built once with bm25s, saved, and memory-mapped on load.

    index = BM25Index.build(documents)          # or BM25Index.from_jsonl("corpus.jsonl")
    index.save("runs/index/world")
    index = BM25Index.load("runs/index/world")  # the score matrix and documents are mmap'ed
    hits = index.retrieve(["capital of Oskaria", "Lumeva"], topk=3)   # batched queries

The directory holds bm25s's sparse score matrix and vocabulary, the documents as jsonl, and
the byte offset of each document line, so loading does not read the corpus into memory.
"""

from __future__ import annotations

import json
import mmap
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from agentrl.tools.corpus import Document, Hit, load_corpus_jsonl

if TYPE_CHECKING:
    import bm25s

_DOCS = "documents.jsonl"
_OFFSETS = "documents.offsets.npy"


def _bm25s() -> Any:
    """bm25s, imported on first use: it imports numba when numba is installed, which a process
    that never searches should not pay for (and vLLM's start-up scan of imported modules trips
    over numba's llvmlite wrappers)."""
    try:
        import bm25s
    except ImportError:  # pragma: no cover - depends on the installation
        raise ImportError("BM25 search needs bm25s: pip install 'agentrl[tools]' (or pip install bm25s)") from None
    return bm25s


def _tokenize(texts: Sequence[str]) -> list[list[str]]:
    return _bm25s().tokenize(list(texts), stopwords="en", return_ids=False, show_progress=False)


class _DocumentStore:
    """Documents in a jsonl file, read by line offset through a memory map."""

    def __init__(self, path: Path, offsets: np.ndarray) -> None:
        self._file = open(path, "rb")
        self._map = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ) if offsets.size else None
        self._offsets = offsets

    def __len__(self) -> int:
        return int(self._offsets.size)

    def __getitem__(self, i: int) -> Document:
        start = int(self._offsets[i])
        end = int(self._offsets[i + 1]) if i + 1 < self._offsets.size else len(self._map)
        row = json.loads(self._map[start:end])
        return Document(id=row["id"], title=row["title"], text=row["text"])

    def close(self) -> None:
        if self._map is not None:
            self._map.close()
        self._file.close()


class BM25Index:
    """BM25 retrieval over documents (title and text are indexed together)."""

    def __init__(self, model: "bm25s.BM25", documents: Sequence[Document] | _DocumentStore) -> None:
        self._model = model
        self._documents = documents

    # --- building and persistence -------------------------------------------------------------

    @classmethod
    def build(cls, documents: Sequence[Document]) -> "BM25Index":
        """Index `documents` in memory (seconds for 100k passages)."""
        if not documents:
            raise ValueError("cannot build a BM25 index over an empty corpus")
        model = _bm25s().BM25()
        model.index(_tokenize([f"{d.title} {d.text}" for d in documents]), show_progress=False)
        return cls(model, list(documents))

    @classmethod
    def from_jsonl(cls, path: str | os.PathLike) -> "BM25Index":
        """Index a Search-R1 / FlashRAG corpus file (`{"id", "contents"}` per line)."""
        return cls.build(load_corpus_jsonl(path))

    def save(self, directory: str | os.PathLike) -> Path:
        """Write the index and documents to `directory` (created if needed)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self._model.save(str(directory), show_progress=False)
        offsets = []
        with open(directory / _DOCS, "wb") as f:
            for i in range(len(self)):
                doc = self._documents[i]
                offsets.append(f.tell())
                row = {"id": doc.id, "title": doc.title, "text": doc.text}
                f.write((json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8"))
        np.save(directory / _OFFSETS, np.asarray(offsets, dtype=np.int64))
        return directory

    @classmethod
    def load(cls, directory: str | os.PathLike, mmap: bool = True) -> "BM25Index":
        """Open an index saved with `save`; with `mmap` the matrices and documents stay on disk."""
        directory = Path(directory)
        if not (directory / _DOCS).exists():
            raise FileNotFoundError(
                f"no BM25 index in {directory}: build one with BM25Index.build(docs).save(dir) "
                "or `agentrl serve-retriever --corpus corpus.jsonl --index DIR`"
            )
        model = _bm25s().BM25.load(str(directory), mmap=mmap, show_progress=False)
        offsets = np.load(directory / _OFFSETS, mmap_mode="r" if mmap else None)
        return cls(model, _DocumentStore(directory / _DOCS, np.asarray(offsets)))

    @classmethod
    def load_or_build(cls, directory: str | os.PathLike, corpus_path: str | os.PathLike) -> "BM25Index":
        """Load the index saved in `directory`; if there is none, index the corpus file, save
        it there, and load it memory-mapped."""
        if not (Path(directory) / _DOCS).exists():
            cls.from_jsonl(corpus_path).save(directory)
        return cls.load(directory)

    def close(self) -> None:
        if isinstance(self._documents, _DocumentStore):
            self._documents.close()

    # --- retrieval ----------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._documents)

    def document(self, i: int) -> Document:
        return self._documents[i]

    def retrieve(self, queries: Sequence[str], topk: int = 3) -> list[list[Hit]]:
        """The `topk` best documents for each query, in one batch; documents scoring 0 (no
        query term in common) are left out."""
        if not queries:
            return []
        k = max(1, min(topk, len(self)))
        ids, scores = self._model.retrieve(_tokenize(queries), k=k, show_progress=False, n_threads=0)
        results = []
        for row_ids, row_scores in zip(ids, scores):
            results.append([
                Hit(self._documents[int(i)], float(s)) for i, s in zip(row_ids, row_scores) if s > 0
            ])
        return results

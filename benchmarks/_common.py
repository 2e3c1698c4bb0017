"""What several benchmarks share: the search demo's model, the machine's description, the result.

Imports of torch and agentrl stay inside the functions: benchmarks/heap.py must set glibc's
heap options in a fresh process before torch allocates anything.
"""

from __future__ import annotations

import json
import platform
from pathlib import Path


def search_demo_model(model_path: Path | None, folder: Path) -> tuple[Path, str]:
    """`model_path`, or the search demo's tiny model built untrained in `folder`; and a label."""
    if model_path is not None:
        return model_path, str(model_path)
    from agentrl.config import load_config
    from agentrl.models import build_tiny_model
    from agentrl.training.corpus import env_corpus
    from agentrl.training.demos import demo_overrides
    from agentrl.training.run import env_factory

    make_env = env_factory(load_config(None, demo_overrides("search")))
    texts = env_corpus(make_env, range(1_000_000, 1_002_000))
    return build_tiny_model(texts, Path(folder) / "tiny", seed=0), "tiny, untrained"


def machine() -> dict:
    import torch

    return {"torch": torch.__version__, "threads": torch.get_num_threads(),
            "processor": platform.processor() or platform.machine()}


def write_result(result: dict, table: str, out: Path) -> None:
    """Write the JSON result to `out` and print the table."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(table)
    print(f"\nresult: {out}")

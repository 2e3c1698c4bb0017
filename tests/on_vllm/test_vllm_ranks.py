"""`agentrl train` under torchrun with FSDP and the `vllm` backend: every rank starts its own
engine from the weights it holds and syncs it after each update (docs/scale.md, section 3).

Each rank writes the model for its engine itself: transformers' `save_pretrained` writes on
rank 0 only once a process group exists, which left rank 1's engine without a checkpoint.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from .conftest import free_port

#: two engines and two training ranks share 2 cores
pytestmark = pytest.mark.timeout(1200)


def test_fsdp_ranks_each_run_a_vllm_engine_synced_after_every_update(tmp_path, vllm_model_dir):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("run: {name: fsdp_vllm}\nenv: {id: agentrl/Arithmetic-v0}\n")
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
         str(free_port()), "-m", "agentrl.cli", "train", str(recipe), f"run.out_dir={tmp_path}",
         f"model.path={vllm_model_dir}", "train.parallel=fsdp", "generation=vllm", "sft.demos=0",
         "eval.tasks=2", "rollout.tasks_per_iteration=4", "rollout.group_size=2",
         "rollout.max_new_tokens=8", "rollout.max_total_tokens=512", "train.iterations=2"],
        capture_output=True, text=True, cwd=tmp_path, timeout=1100,
        env={**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"})
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-4000:]
    # One engine per rank, each with agentrl's weight-loading extension.
    assert log.count("agentrl.generation.vllm_worker.WeightSyncExtension'> into") == 2, log[-4000:]
    run = tmp_path / "fsdp_vllm"
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [1, 2]
    # Both ranks' rollouts (4 tasks x 2), and a sync after each update (a partial one raises).
    assert all(line["rollout/trajectories"] == 8 and line["perf/weight_sync_s"] > 0 for line in lines)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["iter_000000", "iter_000002"]

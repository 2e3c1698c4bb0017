"""ARPO's branches of a python agent, on both backends, through the engine and a warm pool.

A rollout defines a variable and writes a file in its first turn (a python call); the `entropy`
strategy then branches it right after that tool result (p0 = 1: every coin is heads). Each
branch's sandbox is a fork of the live one, checked out of the same warm pool: it holds the
parent's variable and file without running the first cell again, and what it writes later stays
its own.
"""

from __future__ import annotations

import math

from agentrl.envs.tool_env import Task, ToolEnv
from agentrl.models import load_model
from agentrl.rollout import EntropyStrategy, RolloutEngine
from agentrl.sandboxes import SandboxPool
from agentrl.tools.python import PythonTool
from agentrl.types import Completion, SamplingParams

from tests.sandboxes.conftest import SMALL

CELLS = [
    "import random\nx = random.randrange(10**9)\nopen('f.txt', 'w').write('from parent')\nprint(x)",
    "print(x, open('f.txt').read())\nopen('mine.txt', 'w').write('TRAJ')",
    "import os\nprint(sorted(os.listdir('.')), open('mine.txt').read())",
]


def run_branches(backend, tokenizer, cells):
    """One rollout playing `cells` (then the answer), branched twice after its first turn; the
    group and how many pool sandboxes were still out after the run."""
    limits = {k: v for k, v in SMALL.items() if k not in ("timeout", "grace", "output_limit_bytes")}
    with SandboxPool(4, backend, start_workers=2, **limits) as pool:

        def make_env():
            return ToolEnv(tools=[PythonTool(pool, timeout=20.0)], tasks=[Task("Say 42.", answer="42")],
                           reward_fn=lambda task, ep: float(ep.answer == task.answer),
                           max_turns=4, call_timeout=60.0)

        def act(episodes, params):
            out = []
            for episode in episodes:
                if episode.turns < len(cells):
                    text = f"<python>{cells[episode.turns].replace('TRAJ', str(episode.traj_id))}</python>"
                else:
                    text = "<answer>42</answer>"
                ids = tokenizer(text, add_special_tokens=False)["input_ids"]
                top = [[math.log(0.5), math.log(0.5)]] * len(ids)
                out.append(Completion(ids, [math.log(0.5)] * len(ids), "stop", text, top_logprobs=top))
            return out

        strategy = EntropyStrategy(initial=1, n=3, beam=3, vocab_size=len(tokenizer), p0=1.0, beta=0.0)
        with RolloutEngine(None, tokenizer, SamplingParams(), env_workers=4) as engine:
            group = engine.run(make_env, [{"seed": 0}], strategy, policy=act)[0]
        return group, pool.stats()["sandbox/pool_in_use"]


def test_entropy_branches_fork_the_live_sandbox_from_the_pool_and_stay_isolated(backend, tiny_model_dir):
    _, tokenizer = load_model(tiny_model_dir)
    group, in_use = run_branches(backend, tokenizer, CELLS)

    parent, *branches = group.trajectories
    assert [t.branched_from for t in group.trajectories] == [None, (0, 1), (0, 1)]
    assert not any(t.infra_error for t in group.trajectories)
    assert all(t.success and t.num_turns == 4 for t in group.trajectories)
    drawn = parent.steps[0].observation.split("<result>")[-1].split("</result>")[0].strip()
    for branch in [parent, *branches]:
        # The parent's variable and file, as the parent left them after turn 1.
        assert f"{drawn} from parent" in branch.steps[1].observation
        # Its own file only: its sibling's writes never reach it.
        assert f"['f.txt', 'mine.txt'] {branch.traj_id}" in branch.steps[2].observation
    # The first cell ran once, in the parent; the branches ran only their own two cells: the
    # forks copied the state exactly.
    assert group.budget["tool_calls"] == 3 + 2 * 2 and group.budget.get("branches/inexact", 0) == 0
    # The branches' sandboxes came out of the pool and went back to it with their episodes.
    assert in_use == 0


def test_a_branch_whose_sandbox_state_could_not_be_copied_is_counted_as_inexact(backend, tiny_model_dir):
    """A file the first cell left open cannot be copied: the fork replays the parent's calls in
    the new sandbox (same state for a deterministic cell), and the rollout counts such branches."""
    _, tokenizer = load_model(tiny_model_dir)
    cells = ["handle = open('kept.txt', 'w')\nx = 6 * 7\nprint(x)", "print(x)"]
    group, _ = run_branches(backend, tokenizer, cells)
    assert [t.branched_from for t in group.trajectories] == [None, (0, 1), (0, 1)]
    assert group.budget["branches/inexact"] == 2
    assert all("42" in t.steps[1].observation for t in group.trajectories)

"""Branched rollouts of a tool env with a Python sandbox, on both backends, through the engine.

A chain draws a random number, reads the clock and writes a file in its first turn; two branches
then continue after that turn (the strategy of docs/tree_grpo.md, "Writing a strategy"). Each
branch must see exactly the parent's state (its next cell prints what the parent's next cell
printed, the `random` state included) and stay isolated from its sibling, which runs at the same
time in its own sandbox.
"""

from __future__ import annotations

import pytest

from agentrl.envs.tool_env import Task, ToolEnv
from agentrl.models import load_model
from agentrl.rollout import RolloutEngine
from agentrl.tools.python import PythonTool
from agentrl.types import Completion, SamplingParams

from tests.sandboxes.conftest import SMALL


class EveryFinishedChainTwice:
    """Per task one chain; when it ends, two branches after its first turn."""

    keep_node_forks = True

    def sampling_params(self, base):
        return base

    def start(self, num_tasks, rollout):
        return [rollout.spawn(task) for task in range(num_tasks)]

    def __init__(self):
        self.refills = 0

    def refill(self, failed, rollout):  # a sandbox lost to the machine: at most 3 replacements
        again = [rollout.spawn(e.group_id) for e in failed if e.branched_from is None]
        again += [rollout.branch(next(p for p in rollout.episodes(e.group_id)
                                      if p.traj_id == e.branched_from[0]), at_turn=e.branched_from[1])
                  for e in failed if e.branched_from is not None]
        again = again[:max(0, 3 - self.refills)]
        self.refills += len(again)
        return again

    def after_round(self, taken, rollout):
        return [rollout.branch(e, at_turn=1) for e, _ in taken
                if e.done and e.branched_from is None and e.turns > 1 for _ in range(2)]

    def finish(self, episodes):
        return list(episodes)


CELLS = [
    "import random, time\nx = random.random()\nt = time.time()\n"
    "open('f.txt', 'w').write(repr(x))\nprint(repr(x), repr(t))",
    "print(repr(x), repr(t), open('f.txt').read(), random.random())\n"
    "open('mine.txt', 'w').write('TRAJ')",
    "import os\nprint(sorted(os.listdir('.')), open('mine.txt').read())",
]


def test_branches_continue_from_the_parents_exact_sandbox_state_and_stay_isolated(backend, tiny_model_dir):
    _, tokenizer = load_model(tiny_model_dir)
    limits = {k: v for k, v in SMALL.items() if k != "timeout"}

    def make_env():
        return ToolEnv(tools=[PythonTool(backend=backend, timeout=20.0, **limits)],
                       tasks=[Task("Say 42.", answer="42")],
                       reward_fn=lambda task, ep: float(ep.answer == task.answer),
                       max_turns=4, call_timeout=60.0)

    def act(episodes, params):
        out = []
        for episode in episodes:
            if episode.turns < len(CELLS):
                text = f"<python>{CELLS[episode.turns].replace('TRAJ', str(episode.traj_id))}</python>"
            else:
                text = "<answer>42</answer>"
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            out.append(Completion(ids, [0.0] * len(ids), "stop", text))
        return out

    with RolloutEngine(None, tokenizer, SamplingParams(), env_workers=4) as engine:
        groups = engine.run(make_env, [{"seed": 0}], EveryFinishedChainTwice(), policy=act)
    # (An episode the machine failed, e.g. a container that vanished, was replaced: not these.)
    healthy = [t for t in groups[0].trajectories if not t.infra_error]
    parent, *branches = healthy
    assert parent.info.get("infra_error") is None and len(branches) == 2
    assert all(t.success and t.num_turns == 4 for t in healthy)
    drawn = parent.steps[0].observation
    for branch in branches:
        assert branch.node_path[0] == parent.node_path[0] and branch.steps[0].observation == drawn
        assert branch.node_path[1:] != parent.node_path[1:]
        # Exact state: the same x, t and file, and the same next random number as the parent.
        assert branch.steps[1].observation == parent.steps[1].observation
        # Its own writes stay its own: each sees the file it wrote, not its sibling's.
        assert branch.steps[2].observation.strip().endswith(f"{branch.traj_id}\n</result>".strip())
    assert parent.steps[2].observation.strip().endswith(f"{parent.traj_id}\n</result>".strip())
    # The first cell ran once, in its node: the branches ran only their own two cells.
    if len(healthy) == len(groups[0].trajectories):
        assert groups[0].budget["tool_calls"] == 3 + 2 * 2

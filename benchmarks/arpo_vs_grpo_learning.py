"""ARPO (soft and hard attribution) against GRPO on SearchPythonQA at an equal rollout budget.

All arms start from the same SFT checkpoint (written once by
`agentrl sft recipes/searchqa_python_arpo.yaml`) and run the same iterations over the same
questions, with 4 trajectories per question:

- `grpo`: G = 4 independent rollouts per question, GRPO advantages;
- `arpo_soft`: recipes/searchqa_python_arpo.yaml, 2 rollouts from the prompt grown to 4 by
  entropy-triggered branches after tool results, GRPO over the 4 (the reference code's credit);
- `arpo_hard`: the same rollouts, hard attribution (a shared turn gets the mean advantage of the
  rollouts sharing it, trained once).

Each run evaluates on the recipe's held-out questions before and after RL. The JSON result holds
every run's held-out success (exact match) and tool calls per episode before and after, and the
training budget spent (generated tokens, tool calls executed, trajectories, branches); the table
gives each arm's mean ± standard error over seeds.

    python benchmarks/arpo_vs_grpo_learning.py --sft runs/sft/sft_model --seeds 0 1 2 \\
        --iterations 100 --jobs 2 --out-dir runs/arpo-vs-grpo env.kwargs.sandbox_backend=bwrap
"""

from __future__ import annotations

from pathlib import Path

from _learning import compare, mean_se, run_from_sft

RECIPE = "recipes/searchqa_python_arpo.yaml"
ARMS = {
    "grpo": ["rollout.strategy=chain", "rollout.group_size=4", "algorithm.advantage=grpo"],
    "arpo_soft": ["algorithm.attribution=soft"],
    "arpo_hard": ["algorithm.attribution=hard"],
}


def run_arm(arm: str, seed: int, sft: Path, iterations: int, out_dir: Path, extra: list[str]) -> dict:
    row = run_from_sft(f"{arm}-seed{seed}", RECIPE, ARMS[arm], sft=sft, seed=seed,
                       iterations=iterations, out_dir=out_dir, extra=extra)
    return {"arm": arm, **row}


def markdown(rows: list[dict]) -> str:
    lines = ["| arm | seeds | held-out success before | after | gain (points) | held-out reward before "
             "| after | tool calls per held-out episode after | tool calls per training trajectory "
             "| generated tokens (M) | trajectories (k) | branches (k) | wall (min) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for arm in ARMS:
        mine = [r for r in rows if r["arm"] == arm]
        if not mine:
            continue
        cells = []
        for key in ("em_before", "em_after"):
            m, se = mean_se([r[key] * 100 for r in mine])
            cells.append(f"{m:.1f} ± {se:.1f}")
        m, se = mean_se([(r["em_after"] - r["em_before"]) * 100 for r in mine])
        cells.append(f"{m:+.1f} ± {se:.1f}")
        for when in ("before RL", "after RL"):  # ARPO's reward: -1 invalid, F1 (+0.1 both tools)
            m, se = mean_se([r["results"][when]["mean_return"] for r in mine])
            cells.append(f"{m:+.3f} ± {se:.3f}")
        m, se = mean_se([r["tool_calls_per_episode_after"] or 0.0 for r in mine])
        cells.append(f"{m:.2f} ± {se:.2f}")
        m, se = mean_se([r["tool_calls"] / max(1.0, r["trajectories"]) for r in mine])
        cells.append(f"{m:.2f} ± {se:.2f}")
        for key, scale in (("generated_tokens", 1e-6), ("trajectories", 1e-3), ("branches", 1e-3),
                           ("wall_s", 1 / 60)):
            cells.append(f"{mean_se([r[key] * scale for r in mine])[0]:.2f}")
        lines.append(f"| {arm} | {', '.join(str(r['seed']) for r in mine)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    compare(__doc__, list(ARMS), run_arm, markdown, name="arpo_vs_grpo_learning", iterations=100)


if __name__ == "__main__":
    main()

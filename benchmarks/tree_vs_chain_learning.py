"""Tree-GRPO against GRPO on SearchQA at an equal rollout budget: held-out EM, several seeds.

Both arms start from the same SFT checkpoint (the search demo's warm-up, written once by
`agentrl sft recipes/searchqa_grpo.yaml`) and run the same number of iterations over the same
questions per iteration:

- `grpo`: recipes/searchqa_grpo.yaml with G = 4 chains per question;
- `tree_grpo`: recipes/searchqa_tree_grpo.yaml, 2 trees x (1 chain + 2 branches) = 6 leaves per
  question, which costs about the generated tokens and searches of 4 chains (branches inherit
  their prefix), the paper's equal-budget setting.

Each run evaluates on the 300 held-out questions before and after RL. The JSON result holds every
run's before/after EM, its generated tokens, searches executed, trajectories trained on and wall
time; the printed table gives each arm's mean and standard error over seeds.

    python benchmarks/tree_vs_chain_learning.py --sft runs/sft/sft_model --seeds 0 1 2 \\
        --iterations 150 --jobs 2 --out-dir runs/tree-vs-chain
"""

from __future__ import annotations

from pathlib import Path

from _learning import compare, mean_se, run_from_sft

ARMS = {
    "grpo": ["recipes/searchqa_grpo.yaml", "rollout.group_size=4"],
    "tree_grpo": ["recipes/searchqa_tree_grpo.yaml"],
}


def run_arm(arm: str, seed: int, sft: Path, iterations: int, out_dir: Path, extra: list[str]) -> dict:
    recipe, *settings = ARMS[arm]
    row = run_from_sft(f"{arm}-seed{seed}", recipe, settings, sft=sft, seed=seed,
                       iterations=iterations, out_dir=out_dir, extra=extra)
    return {"arm": arm, **row, "search_calls": row["tool_calls"]}


def markdown(rows: list[dict]) -> str:
    lines = ["| arm | seeds | held-out EM before | EM after | gain (points) | generated tokens (M) "
             "| searches run (k) | trajectories trained (k) | wall (min) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for arm in ARMS:
        mine = [r for r in rows if r["arm"] == arm]
        if not mine:
            continue
        cells = []
        for key, scale in (("em_before", 100), ("em_after", 100)):
            m, se = mean_se([r[key] * scale for r in mine])
            cells.append(f"{m:.1f} ± {se:.1f}")
        m, se = mean_se([(r["em_after"] - r["em_before"]) * 100 for r in mine])
        cells.append(f"{m:+.1f} ± {se:.1f}")
        for key, scale in (("generated_tokens", 1e-6), ("search_calls", 1e-3), ("trajectories", 1e-3),
                           ("wall_s", 1 / 60)):
            cells.append(f"{mean_se([r[key] * scale for r in mine])[0]:.2f}")
        lines.append(f"| {arm} | {', '.join(str(r['seed']) for r in mine)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    compare(__doc__, list(ARMS), run_arm, markdown, name="tree_vs_chain_learning", iterations=150)


if __name__ == "__main__":
    main()

"""Per-completion sampling seeds.

Every completion draws its own noise. A run seeds each one from a key that names it: the
rollout's base seed (from the run seed and the task counter), the group, the trajectory and the
turn. So turn t of trajectory j never reuses the noise of another turn, of another row with the
same prompt, or of another branch, while the same run seed still reproduces every completion,
whatever else shares its batch.
"""

from __future__ import annotations

import hashlib

#: Seeds stay below 2**63: torch and the OpenAI-compatible servers (vLLM) take them as int64.
SEED_BITS = 63


def derive_seed(*key: int) -> int:
    """A well-mixed seed for the completion named by `key` (stable across Python processes,
    unlike `hash`). Keys that differ in any part give unrelated seeds."""
    digest = hashlib.blake2b(",".join(str(int(part)) for part in key).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> (64 - SEED_BITS)


def row_seeds(count: int, seeds: list[int] | None, batch_seed: int | None) -> list[int | None]:
    """The seed of each of `count` rows: `seeds` as given; else one per row derived from the
    batch seed and the row's index (rows with identical prompts still differ); else None
    (fresh randomness)."""
    if seeds is not None:
        if len(seeds) != count:
            raise ValueError(f"Got {len(seeds)} seeds for {count} prompts; pass one seed per prompt.")
        return [int(s) for s in seeds]
    if batch_seed is None:
        return [None] * count
    return [derive_seed(batch_seed, row) for row in range(count)]

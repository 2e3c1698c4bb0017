"""Several ranks under torchrun: the process group, who is who, and the collectives the update needs.

`torchrun --nproc-per-node N -m agentrl.cli train recipe.yaml` starts N copies of the trainer and
tells each its place through the environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
MASTER_PORT). Every rank rolls out its share of the iteration's groups and backpropagates through
its own trajectories; the gradients are then summed over the ranks, so every rank takes the same
step. `train.parallel` says how (`make_gradient_sync`): "ddp" keeps the whole policy on every
rank and sums the gradients once per optimizer step (`GradientSync`); "fsdp" shards weights,
gradients and optimizer state over the ranks and sums in every backward (`ShardedGradientSync`).

Why sharding whole groups is exact: advantages are computed within a group (GRPO, GiGPO, ...), and
the loss of a mini-batch is a sum over its trajectories divided by one denominator (its action
tokens or its sequences). With the denominator summed over the ranks (`all_reduce_sum`) and the
per-rank gradients summed, the step equals the one a single process takes on the
same trajectories, up to float rounding.

The backend is gloo on CPU and NCCL when the policy lives on a GPU. One process (no torchrun, or
WORLD_SIZE=1) never touches torch.distributed: every helper here is then the identity.
"""

from __future__ import annotations

import os
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, ContextManager, Iterator, Sequence

import torch
import torch.distributed as dist

from agentrl.config import Config, ConfigError

#: How long a rank waits in a collective. Generous, because ranks other than 0 wait at a
#: barrier while rank 0 builds the model, runs the SFT warm-up and evaluates.
COLLECTIVE_TIMEOUT = timedelta(hours=3)


@dataclass(frozen=True)
class Ranks:
    """This process's place among the ranks of a run (one process: rank 0 of 1)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that writes the run directory (checkpoints, logs, evaluations)."""
        return self.rank == 0

    def share(self, count: int) -> range:
        """This rank's contiguous block of `count` items (the first `count % world_size` ranks
        take one more). Blocks in rank order give back range(count)."""
        base, extra = divmod(count, self.world_size)
        start = self.rank * base + min(self.rank, extra)
        return range(start, start + base + (1 if self.rank < extra else 0))


def launched_ranks() -> Ranks:
    """The ranks torchrun announced in the environment (RANK, WORLD_SIZE, LOCAL_RANK)."""
    try:
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError as exc:
        raise ConfigError(f"RANK/WORLD_SIZE/LOCAL_RANK must be integers ({exc}); start the run with "
                          "torchrun, which sets them") from None
    if world_size < 1 or not 0 <= rank < world_size:
        raise ConfigError(f"RANK={rank} is not a rank of WORLD_SIZE={world_size}; start the run with torchrun, "
                          "which sets them")
    return Ranks(rank, world_size, local_rank)


def current_ranks() -> Ranks:
    """The ranks of the process group in use (one process when none is initialised)."""
    if not (dist.is_available() and dist.is_initialized()):
        return Ranks()
    local_rank = int(os.environ.get("LOCAL_RANK", str(dist.get_rank())))
    return Ranks(dist.get_rank(), dist.get_world_size(), local_rank)


def check_world_size(config: Config, world_size: int, *, generator_holds_weights: bool | None = None) -> None:
    """Refuse a world size that cannot share the iteration's groups evenly, and FSDP where it
    cannot run. Raised before anything is built, so the run fails before its first rollout.

    `generator_holds_weights`: whether the generator samples from a copy of the weights of its
    own, synced after each update (default: what the recipe's `generation.backend` builds; the
    trainer passes it for a generator it was handed)."""
    if world_size <= 1:
        return
    tasks = config.rollout.tasks_per_iteration
    if tasks % world_size:
        fits = [n for n in range(world_size, 0, -1) if tasks % n == 0][0]
        raise ConfigError(
            f"rollout.tasks_per_iteration={tasks} does not divide among {world_size} ranks (each rank rolls "
            f"out whole groups); set rollout.tasks_per_iteration to a multiple of {world_size} or run "
            f"torchrun --nproc-per-node {fits}")
    if config.train.parallel != "fsdp":
        return
    if generator_holds_weights is None:
        generator_holds_weights = config.generation.backend != "hf"
    # FSDP gathers each layer's shards in every forward, so every rank must run the same
    # forwards in the same order. The update pads the ranks' passes to match
    # (ShardedGradientSync), but a generator sampling from the trained module runs a different
    # number of forwards on every rank (each samples its own tokens), so its gathers would
    # never pair up. A generator with its own weights (vLLM, a served model) never touches the
    # shards. LoRA adapters are refused too: with a KL term their model doubles as the
    # reference, which would add forwards that only ranks with trajectories run.
    why = None
    if not generator_holds_weights:
        why = ("the hf generator samples from the very weights FSDP shards, and ranks sample different "
               "numbers of tokens; use generation.backend=vllm (or openai), which keeps its own copy of the "
               "weights, or")
    elif config.model.lora is not None:
        why = "LoRA adapters (model.lora) are not sharded by agentrl; drop model.lora, or"
    if why is not None:
        raise ConfigError(f"train.parallel=fsdp cannot run here: {why} use train.parallel=ddp, which keeps a "
                          "whole copy of the policy on every rank (docs/scale.md, section 3)")


@contextmanager
def process_group(config: Config) -> Iterator[Ranks]:
    """Join the ranks torchrun started for the length of the block (gloo on CPU, NCCL on GPU),
    after checking that the recipe can be shared among them. One process: nothing to join."""
    if dist.is_available() and dist.is_initialized():  # the caller set one up (tests, notebooks)
        check_world_size(config, dist.get_world_size())
        yield current_ranks()
        return
    ranks = launched_ranks()
    check_world_size(config, ranks.world_size)
    if not ranks.distributed:
        yield ranks
        return
    backend = "gloo"
    if config.model.device != "cpu" and torch.cuda.is_available():
        backend = "nccl"
        torch.cuda.set_device(ranks.local_rank)  # "cuda" in the recipe then means this rank's GPU
    dist.init_process_group(backend, timeout=COLLECTIVE_TIMEOUT)
    try:
        yield ranks
    finally:
        dist.destroy_process_group()


# --- collectives (the identity for one process) ---------------------------------------------------


def barrier() -> None:
    """Wait until every rank gets here."""
    if current_ranks().distributed:
        dist.barrier()


def all_reduce_sum(*values: float) -> tuple[float, ...]:
    """Each value summed over the ranks (in float64, so counts stay exact)."""
    if not current_ranks().distributed:
        return tuple(float(v) for v in values)
    summed = torch.tensor(values, dtype=torch.float64, device=_collective_device())
    dist.all_reduce(summed)
    return tuple(summed.tolist())


def all_reduce_max(value: int) -> int:
    """The largest of the ranks' `value`s."""
    if not current_ranks().distributed:
        return int(value)
    most = torch.tensor([value], dtype=torch.int64, device=_collective_device())
    dist.all_reduce(most, op=dist.ReduceOp.MAX)
    return int(most.item())


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's `obj` (picklable), in rank order."""
    ranks = current_ranks()
    if not ranks.distributed:
        return [obj]
    gathered: list[Any] = [None] * ranks.world_size
    dist.all_gather_object(gathered, obj)
    return gathered


def gather_objects(obj: Any) -> list[Any] | None:
    """Every rank's `obj` in rank order on rank 0; None on the other ranks."""
    ranks = current_ranks()
    if not ranks.distributed:
        return [obj]
    gathered: list[Any] | None = [None] * ranks.world_size if ranks.is_main else None
    dist.gather_object(obj, gathered, dst=0)
    return gathered


def _collective_device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


# --- gradients ------------------------------------------------------------------------------------


class GradientSync:
    """Sums the gradients of every rank once per optimizer step, through PyTorch DDP.

    The update runs its micro-batches through the plain module inside `accumulating()` (DDP's
    `no_sync`: gradients pile up locally, no communication), then `synchronise()` runs one pass
    through the DDP wrapper whose loss is zero: its backward all-reduces the accumulated
    gradients in DDP's buckets. So ranks may backpropagate through different numbers of
    micro-batches (or none), and the shared-prefix forward may call the model several times per
    micro-batch; DDP only ever sees the one matched pass. DDP averages over the ranks, so each
    loss is multiplied by `loss_scale` (the world size) to make the result the sum.

    With one process it does nothing and `loss_scale` is 1.
    """

    #: Every rank holds the whole weights (a checkpoint or a weight sync needs no gather).
    shards_weights = False
    #: The shared-prefix forward may call the model a different number of times on each rank:
    #: DDP does not mind, since it only sees the one matched pass of `synchronise()`.
    allows_shared_prefix = True

    def __init__(self, model: torch.nn.Module, ranks: Ranks) -> None:
        self.model = model
        self.loss_scale = float(ranks.world_size)
        self._ddp = None
        if ranks.distributed:
            from torch.nn.parallel import DistributedDataParallel

            device = next(model.parameters()).device
            # Building the wrapper copies rank 0's weights (and buffers) to every rank. The
            # buffers (rotary tables) are never trained: no need to send them again each pass.
            self._ddp = DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None, forward_sync_buffers=False)

    def accumulating(self) -> ContextManager[Any]:
        """The block whose backward passes only accumulate locally."""
        return self._ddp.no_sync() if self._ddp is not None else nullcontext()

    def match_passes(self, count: int) -> None:
        """Called before this rank's `count` passes of an optimizer step: nothing to match, DDP
        communicates only in `synchronise()`."""

    def synchronise(self) -> None:
        """Sum the accumulated gradients over the ranks (every rank must call it)."""
        if self._ddp is None:
            return
        _idle_pass(self._ddp, self.model)


def _idle_pass(forward: torch.nn.Module, model: torch.nn.Module) -> None:
    """A forward and backward of `forward` on one token whose loss is zero: it adds nothing to
    any gradient, but runs every collective a real pass runs."""
    device = next(model.parameters()).device
    token = torch.zeros((1, 1), dtype=torch.long, device=device)
    logits = forward(input_ids=token, attention_mask=torch.ones_like(token)).logits
    (logits.float().sum() * 0.0).backward()


class ShardedGradientSync:
    """FSDP (`train.parallel: fsdp`): each rank holds a slice of every weight, gradient and
    optimizer state, so a policy too large for one device's memory still trains.

    `fully_shard` (FSDP2) turns each decoder layer, and then the rest of the model (embeddings,
    final norm, head), into a unit whose parameters are DTensors sharded over the ranks. A
    unit's forward first all-gathers its whole weights, and its backward reduce-scatters its
    gradient: each rank keeps the sum over the ranks of its own slice. Those collectives run in
    every pass, so every rank must run the same number of forward/backward passes per
    optimizer step: `match_passes` pads a rank that has fewer micro-batches with passes that
    add nothing to the gradient (one token, loss times 0), run before its real ones. For the same reason the update runs the plain forward (one
    model call per micro-batch), not the shared-prefix one, whose number of calls depends on
    the sequences a rank holds.

    Each backward reduce-scatters at once rather than holding the whole gradient until the
    step (as DDP's no_sync does): what FSDP saves is exactly that memory. The reduction
    averages over the ranks, so, as under DDP, each loss is multiplied by `loss_scale` (the
    world size) to make it the sum. The optimizer must be built after this, on the sharded
    parameters.
    """

    shards_weights = True
    allows_shared_prefix = False

    def __init__(self, model: torch.nn.Module, ranks: Ranks) -> None:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        self.model = model
        self.loss_scale = float(ranks.world_size)
        # Hugging Face models name the blocks that must stay whole on one device: their layers.
        layer_names = set(getattr(model, "_no_split_modules", None) or ())
        layers = [m for m in model.modules() if type(m).__name__ in layer_names]
        if not layers:
            raise ConfigError(f"train.parallel=fsdp: {type(model).__name__} names no decoder layers "
                              "(_no_split_modules) to shard; use train.parallel=ddp")
        device = next(model.parameters()).device
        # The ranks loaded the same checkpoint, but start from rank 0's weights as DDP does, so
        # that nothing a rank did on its own (e.g. a seeded initialisation) can split them.
        for tensor in model.state_dict().values():
            dist.broadcast(tensor.data, src=0)
        mesh = init_device_mesh(device.type, (ranks.world_size,))
        for layer in layers:
            fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)

    def accumulating(self) -> ContextManager[Any]:
        """Each backward reduce-scatters into the sharded gradients: nothing to hold back."""
        return nullcontext()

    def match_passes(self, count: int) -> None:
        """Before this rank's `count` passes of an optimizer step, run as many passes that add
        nothing as it has fewer than the busiest rank (every rank must call it, before any
        pass of the step: the count is agreed on first)."""
        for _ in range(all_reduce_max(count) - count):
            _idle_pass(self.model, self.model)

    def synchronise(self) -> None:
        """Nothing left to do: every backward has already summed its gradients over the ranks."""


def make_gradient_sync(model: torch.nn.Module, ranks: Ranks, parallel: str) -> GradientSync | ShardedGradientSync:
    """What sums the ranks' gradients for `train.parallel` (`parallel`): DDP by default, FSDP
    sharding (which replaces `model`'s parameters by shards: build the optimizer after this).
    One process: a GradientSync that does nothing."""
    if ranks.distributed and parallel == "fsdp":
        return ShardedGradientSync(model, ranks)
    return GradientSync(model, ranks)


def global_positions(local_groups: Sequence[tuple[int, int]],
                     all_groups: Sequence[tuple[int, int]]) -> list[int]:
    """Where each of this rank's trajectories sits in the batch a single process would build.

    Both arguments list (group id, number of trajectories) pairs; `all_groups` those of every
    rank. A single process lists the trajectories group by group in group-id order, so a
    trajectory's position is the count of trajectories in groups with smaller ids plus its
    index within its own group.
    """
    first: dict[int, int] = {}
    position = 0
    for group_id, count in sorted(all_groups):
        first[group_id] = position
        position += count
    return [first[group_id] + k for group_id, count in local_groups for k in range(count)]

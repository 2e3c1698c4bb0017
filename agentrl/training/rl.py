"""The RL training loop: rollout -> rewards and advantages -> micro-batched policy update.

Reads top to bottom like a CleanRL script, one iteration at a time:

    tasks   = the iteration's env seeds (a pure function of the run seed and the task counter)
    groups  = engine.run(tasks, strategy)       # multi-turn rollouts: chains or trees per task
    keep    = group filter (none / DAPO dynamic sampling / UFO top-std)
    adv     = the estimator `algorithm.advantage` names (GRPO, GiGPO, Tree-GRPO, ...): per-token
              advantages of the kept trajectories
    update  = ppo_epochs x mini_batches optimizer steps, each accumulated over micro-batches:
              clipped policy loss (+ KL to a reference, - entropy bonus), AdamW, grad clipping
    log     = metrics.jsonl + TensorBoard under rollout/ reward/ loss/ policy/ perf/ tools/
    save    = checkpoint every `checkpoint_every` iterations and on Ctrl-C (resumable)

The generator is injected (the recipe's `generation` section; `make_generator`). The hf backend
samples from the very module the trainer updates, so new weights are seen by the next rollout
without any copy; a backend with its own copy of the weights (vLLM) gets them through
`sync_weights` after every update: once, after its last optimizer step, because nothing is
sampled between the optimizer steps of one update.
"""

from __future__ import annotations

import copy
import json
import math
import random
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from agentrl.algorithms import (
    aggregate,
    dynamic_sampling_filter,
    kl_penalty,
    policy_loss,
    token_advantages,
    top_std_filter,
)
from agentrl.config import Config
from agentrl.generation import Generator, close_generator, make_generator, sync_weights
from agentrl.models import attention_implementation, autocast, resolve_autocast
from agentrl.models.lora import adapters_disabled, is_peft_model
from agentrl.models.sharding import whole_tensor
from agentrl.rollout import RolloutEngine, make_strategy
from agentrl.training.batch import collate, family_micro_batches, micro_batches
from agentrl.training.checkpoint import (
    checkpoint_dir,
    gather_sharded_state,
    is_complete,
    latest_checkpoint,
    load_policy_weights,
    load_trainer_state,
    save_checkpoint,
)
from agentrl.generation.seeding import derive_seed
from agentrl.training.distributed import (
    all_gather_objects,
    all_reduce_sum,
    check_world_size,
    current_ranks,
    gather_objects,
    global_positions,
    make_gradient_sync,
)
from agentrl.training.logprobs import token_logprobs
from agentrl.training.metrics import DiscardingLogger, MetricsLogger, log_lengths
from agentrl.training.tool_metrics import tool_metrics
from agentrl.training.optim import make_optimizer, warmup_cosine
from agentrl.training.shared_prefix import PrefixPlan, plan_shared_prefixes
from agentrl.types import Group, SamplingParams, Trajectory

#: DAPO dynamic sampling: at most this many extra rollout rounds to fill a batch.
MAX_EXTRA_SAMPLING_ROUNDS = 2


class RLTrainer:
    """Owns the policy, its optimizer, the rollout engine and the run directory's sinks."""

    def __init__(
        self,
        config: Config,
        run_dir: Path,
        model: torch.nn.Module,
        tokenizer: Any,
        make_env: Callable[[], Any],
        *,
        on_iteration: Callable[[int, dict[str, float]], None] | None = None,
        generator: Generator | None = None,
    ) -> None:
        """`generator`: what samples the rollouts (default: the recipe's `generation` backend,
        built here and closed by `train()`; one passed in stays its owner's to close)."""
        self.config = config
        self.run_dir = Path(run_dir)
        self.model = model
        self.tokenizer = tokenizer
        self.make_env = make_env
        self.on_iteration = on_iteration
        cfg, rcfg, tcfg = config, config.rollout, config.train
        # Under torchrun: this rank's place (one process: rank 0 of 1). Every rank rolls out its
        # share of the groups; rank 0 alone writes the run directory.
        self.ranks = current_ranks()
        check_world_size(config, self.ranks.world_size,
                         generator_holds_weights=None if generator is None
                         else getattr(generator, "sync_weights", None) is not None)

        device = next(model.parameters()).device
        self.autocast = resolve_autocast(config.model.autocast, device)
        self._owns_generator = generator is None
        if generator is None:
            generator = make_generator(config.generation, model, tokenizer, max_batch_size=rcfg.max_batch_size,
                                       max_model_len=rcfg.max_total_tokens, autocast=self.autocast)
        self.generator = generator
        sampling = SamplingParams(temperature=rcfg.temperature, top_p=rcfg.top_p,
                                  max_new_tokens=rcfg.max_new_tokens)
        self.engine = RolloutEngine(self.generator, tokenizer, sampling, max_turns=rcfg.max_turns,
                                    max_total_tokens=rcfg.max_total_tokens,
                                    env_workers=rcfg.env_workers,
                                    check_template=rcfg.check_template)
        self.strategy = make_strategy(rcfg.strategy, group_size=rcfg.group_size, vocab_size=len(tokenizer))
        # A frozen copy of the starting policy, only when a KL term needs it. With LoRA adapters
        # (which start at zero) the starting policy is the base model: the policy itself with
        # its adapters disabled (`_loss`), so no second copy of the weights is kept. Copied
        # before FSDP shards the policy: the copy stays whole and runs no collectives.
        self.ref_model = None
        if cfg.algorithm.kl_coef > 0:
            self.ref_model = model if is_peft_model(model) else copy.deepcopy(model).eval().requires_grad_(False)
        self.logger = MetricsLogger(self.run_dir) if self.ranks.is_main else DiscardingLogger()
        # Sums the ranks' gradients (one process: nothing to do). Under FSDP it shards the
        # policy's parameters, so the optimizer comes after it, over the shards.
        self.gradient_sync = make_gradient_sync(model, self.ranks, tcfg.parallel)
        self.optimizer = make_optimizer(model, tcfg.lr, tcfg.weight_decay, tuple(tcfg.betas))
        total_steps = tcfg.iterations * tcfg.ppo_epochs * tcfg.mini_batches
        self.scheduler = warmup_cosine(self.optimizer, tcfg.warmup_steps, total_steps, tcfg.min_lr_ratio)
        self.iteration = 0
        self.next_task = 0  # task counter: iteration i's seeds follow from it deterministically
        self._iteration_first_task = 0
        self._updating = False  # True while the weights are half-way through an update

    # --- loop ------------------------------------------------------------------------------

    def resume(self) -> bool:
        """Continue from the newest complete checkpoint of the run directory; False if there is
        none. The run's logs are cut back to where they were at that checkpoint, so the
        iterations that run again write their lines once."""
        path = latest_checkpoint(self.run_dir)
        if path is None:
            return False
        load_policy_weights(self.model, path)
        sync_weights(self.generator, self.model)  # a generator with its own copy samples them too
        state = load_trainer_state(path, self.optimizer, self.scheduler, self.model)
        self.iteration = int(state["iteration"])
        self.next_task = int(state["next_task"])
        if "log_lengths" in state:  # (checkpoints of earlier versions did not record them)
            self.logger.rewind(state["log_lengths"])
        return True

    def save(self, logs: dict[str, int] | None = None) -> Path:
        """Checkpoint the state before iteration `self.iteration` runs. `logs`: the log lengths
        that belong to that state (default: the logs as they are now). Over several ranks only
        rank 0 writes it (the ranks' states are equal); the others return its path. Under FSDP
        every rank first takes part in gathering the whole state from the shards."""
        sharded_state = gather_sharded_state(self.model, self.optimizer)
        if not self.ranks.is_main:
            return checkpoint_dir(self.run_dir, self.iteration)
        logs = log_lengths(self.run_dir) if logs is None else logs
        return save_checkpoint(self.run_dir, self.iteration, self.model, self.tokenizer, self.optimizer,
                               self.scheduler, {"next_task": self.next_task, "log_lengths": logs},
                               keep=self.config.train.keep_checkpoints, sharded_state=sharded_state)

    def train(self) -> None:
        """Run the remaining iterations. Ctrl-C leaves a checkpoint to resume from, and so does a
        kill at any moment (the newest checkpoint on disk)."""
        tcfg = self.config.train
        # Where the logs and the optimizer were when the running iteration began (the logs are
        # None between iterations).
        logs_before_iteration: dict[str, int] | None = None
        steps_before_iteration = self.scheduler.last_epoch
        try:
            if latest_checkpoint(self.run_dir) is None:
                self.save()  # the starting point, so that a run killed in iteration 1 resumes too
            while self.iteration < tcfg.iterations:
                logs_before_iteration = log_lengths(self.run_dir)
                steps_before_iteration = self.scheduler.last_epoch
                metrics = self.train_iteration()
                self.iteration += 1
                self._iteration_first_task = self.next_task  # the new point to resume from
                logs_before_iteration = None  # and the lines written so far belong to it
                if self.on_iteration is not None:
                    self.on_iteration(self.iteration, metrics)
                if self.iteration % tcfg.checkpoint_every == 0 or self.iteration == tcfg.iterations:
                    self.save()
        except KeyboardInterrupt:
            # Leave the last completed iteration on disk, unless it is there already (a
            # checkpoint taken at the time also has the RNG state of the time). Between
            # iterations (an evaluation, a save) that state is the state now; within one, only
            # while the weights are those the iteration started from (else the newest
            # checkpoint on disk is where the run resumes). Under FSDP saving gathers from every
            # rank, which an interrupted rank cannot count on: the newest checkpoint it is.
            if not (self.gradient_sync.shards_weights or is_complete(checkpoint_dir(self.run_dir, self.iteration))):
                if logs_before_iteration is None:
                    self.save()
                elif not (self._updating or self.scheduler.last_epoch != steps_before_iteration):
                    self.next_task = self._iteration_first_task  # redo this iteration's tasks
                    self.save(logs=logs_before_iteration)  # and log its lines again, once
            raise
        finally:
            self.engine.close()
            self.logger.close()
            if self._owns_generator:
                close_generator(self.generator)

    def train_iteration(self) -> dict[str, float]:
        cfg = self.config
        started = time.perf_counter()
        self._iteration_first_task = self.next_task

        # 1. Rollout (with DAPO-style refills when a filter drops uninformative groups).
        groups, kept_ids, rollout_time = self._rollout_with_filter()
        strategy_metrics = getattr(self.strategy, "metrics", dict)()  # e.g. arpo/ diagnostics
        # Over several ranks, rank 0 sees every rank's groups (in group order, as one process
        # would have them) for the metrics and the trajectory log; the others log nothing.
        everyone = gather_objects((groups, rollout_time, strategy_metrics))
        all_groups = groups
        if everyone is not None:
            all_groups = sorted((g for part in everyone for g in part[0]), key=lambda g: g.group_id)
            rollout_time = max(part[1] for part in everyone)
            strategy_metrics = _mean_of_ranks([part[2] for part in everyone])
        rollout_metrics = self._rollout_metrics(all_groups, rollout_time)
        rollout_metrics.update(strategy_metrics)

        # 2. Advantages, broadcast to each trajectory's action tokens. A trajectory the
        #    infrastructure ended (env crash, tool or sandbox failure) is in no group statistic.
        kept_groups = [Group(g.group_id, g.task, _trainable(g), g.budget) for g in groups
                       if g.group_id in kept_ids]
        kept = [t for g in kept_groups for t in g.trajectories]
        advantages = token_advantages(cfg.algorithm.advantage, kept_groups, cfg.algorithm)
        # Where this rank's trajectories sit in the batch of every rank (one process: 0..n-1).
        mine = [(g.group_id, len(g.trajectories)) for g in kept_groups]
        everyone_kept = [pair for part in all_gather_objects(mine) for pair in part]
        positions = global_positions(mine, everyone_kept)
        batch_size = sum(count for _, count in everyone_kept)

        # 3. Policy update.
        update_started = time.perf_counter()
        self._updating = True
        # Nothing informative kept (e.g. every group solved): no optimizer step this iteration.
        with attention_implementation(self.model, cfg.train.attention):
            update_metrics = (self._update(kept, advantages, positions, batch_size) if batch_size
                              else {"policy/optimizer_steps": 0.0})
        self._updating = False
        update_time = time.perf_counter() - update_started
        # 4. The generator samples the next rollouts from the new weights.
        weight_sync_time = sync_weights(self.generator, self.model) if batch_size else 0.0
        (trained_tokens,) = all_reduce_sum(sum(len(t.token_ids) for t in kept))

        metrics = {
            **rollout_metrics,
            **update_metrics,
            "rollout/groups": float(len(all_groups)),
            "rollout/groups_kept": float(len(kept_ids)),
            "perf/update_s": update_time,
            "perf/weight_sync_s": weight_sync_time,
            "perf/iteration_s": time.perf_counter() - started,
            "perf/train_tokens_per_s": trained_tokens * cfg.train.ppo_epochs / max(update_time, 1e-9),
        }
        self.logger.log(self.iteration + 1, metrics)
        if self.ranks.is_main:
            # Advantages are known for this rank's trajectories; the others' log as not trained.
            self._log_trajectories(all_groups, dict(zip(map(id, kept), advantages)))
        return metrics

    # --- rollout -----------------------------------------------------------------------------

    def _next_tasks(self, count: int) -> list[dict[str, Any]]:
        """This rank's share of the next `count` tasks. Every rank advances the task counter by
        the whole `count`, so the tasks of all ranks together are those one process would run,
        in the same order (rank 0 takes the first block, rank 1 the next, ...)."""
        start = self.config.env.train_seed_offset + self.next_task
        self.next_task += count
        return [{"seed": start + i} for i in self.ranks.share(count)]

    def _rollout_with_filter(self) -> tuple[list[Group], set[int], float]:
        """Rollouts of this iteration, the ids of the groups the filter keeps, and the time."""
        cfg = self.config
        wanted = cfg.rollout.tasks_per_iteration
        groups: list[Group] = []
        kept: set[int] = set()
        elapsed = 0.0
        rounds = 0
        groups_so_far = 0  # over all ranks
        while True:
            count = wanted - len(kept)
            first_seed = cfg.env.train_seed_offset + self.next_task
            tasks = self._next_tasks(count)
            seed = cfg.run.seed * 1_000_003 + self.next_task
            # Ranks number their groups from 0 alike: each draws its own noise.
            self.engine.sampling.seed = derive_seed(seed, self.ranks.rank) if self.ranks.distributed else seed
            t0 = time.perf_counter()
            new = self.engine.run(self.make_env, tasks, self.strategy, close_envs=True)
            elapsed += time.perf_counter() - t0
            for g in new:
                # The group's id is its place among every rank's groups, as one process numbers them.
                g.group_id = groups_so_far + int(g.task["seed"]) - first_seed
                for t in g.trajectories:
                    t.group_id = g.group_id
                groups.append(g)
            groups_so_far += count
            kept = self._apply_filter(groups)
            rounds += 1
            if (cfg.algorithm.group_filter != "dynamic" or len(kept) >= wanted
                    or rounds > MAX_EXTRA_SAMPLING_ROUNDS):
                return groups, kept, elapsed

    def _apply_filter(self, groups: list[Group]) -> set[int]:
        """The ids of the groups the filter keeps, among the groups of every rank (the filter
        compares groups, e.g. UFO's top-std fraction, so it sees them all, in group order)."""
        acfg = self.config.algorithm
        mine = [(g.group_id, [t.reward for t in _trainable(g)]) for g in groups]
        everyone = sorted((pair for part in all_gather_objects(mine) for pair in part), key=lambda p: p[0])
        rewards = [r for _, group_rewards in everyone for r in group_rewards]
        ids = [gid for gid, group_rewards in everyone for _ in group_rewards]
        if acfg.group_filter == "dynamic":
            keep = dynamic_sampling_filter(rewards, ids)
        elif acfg.group_filter == "top_std":
            keep = top_std_filter(rewards, ids, fraction=acfg.top_std_fraction)
        else:
            keep = np.ones(len(rewards), dtype=bool)
        return {gid for gid, k in zip(ids, keep) if k}

    def _rollout_metrics(self, groups: list[Group], rollout_time: float) -> dict[str, float]:
        everything = [t for g in groups for t in g.trajectories]
        trajs = [t for g in groups for t in _trainable(g)] or everything  # all failed: still log
        rewards = np.array([t.reward for t in trajs]) if trajs else np.zeros(1)
        steps = [s for t in trajs for s in t.steps]
        budget = defaultdict(float)
        for g in groups:
            for k, v in g.budget.items():
                budget[k] += v
        return {
            "reward/mean": float(rewards.mean()),
            "reward/std": float(rewards.std()),
            "reward/max": float(rewards.max()),
            "reward/min": float(rewards.min()),
            "rollout/success_rate": float(np.mean([t.success for t in trajs])),
            "rollout/turns_mean": float(np.mean([t.num_turns for t in trajs])),
            "rollout/action_tokens_mean": float(np.mean([t.num_action_tokens for t in trajs])),
            "rollout/sequence_length_mean": float(np.mean([len(t.token_ids) for t in trajs])),
            "rollout/invalid_action_rate": float(np.mean([not s.action_valid for s in steps] or [0.0])),
            "rollout/truncated_rate": float(np.mean([bool(t.info.get("truncated")) for t in trajs])),
            "rollout/trajectories": float(len(trajs)),
            "rollout/infra_errors": float(sum(1 for t in everything if t.infra_error)),
            **tool_metrics(everything),
            "tools/calls": float(budget["tool_calls"]),
            "perf/rollout_s": rollout_time,
            "perf/generate_s": float(budget["time/generate"]),
            "perf/env_s": float(budget["time/env"]),
            "perf/tokens_per_s": budget["tokens/generated"] / max(rollout_time, 1e-9),
            "perf/prompt_tokens_processed": float(budget["tokens/prompt_processed"]),
            "perf/prompt_tokens_cached": float(budget["tokens/prompt_cached"]),
            # Budgets of branched sampling: what each trajectory cost.
            "perf/branch_s": float(budget["time/branch"]),
            "rollout/generated_tokens": float(budget["tokens/generated"]),
            "rollout/env_steps": float(budget["env_steps"]),
            "rollout/branches": float(budget["branches"]),
            "rollout/replayed_branches": float(budget["branches/replayed"]),
            # Forks whose tool state could not be copied and was rebuilt by running calls again.
            "rollout/inexact_branches": float(budget["branches/inexact"]),
            "rollout/trajectories_sampled": float(budget["trajectories/sampled"]),
            "rollout/trajectories_per_1k_gen_tokens":
                1000.0 * len(everything) / max(1.0, budget["tokens/generated"]),
            "rollout/prompt_tokens_per_trajectory":
                budget["tokens/prompt_processed"] / max(1, len(everything)),
        }

    # --- update ------------------------------------------------------------------------------

    def _update(self, trajs: list[Trajectory], advantages: list[np.ndarray],
                positions: list[int] | None = None, batch_size: int | None = None) -> dict[str, float]:
        """The policy update on `trajs` (this rank's trajectories of the iteration).

        Over several ranks, `positions[i]` is where `trajs[i]` sits in the batch of all ranks
        (`batch_size` trajectories; one process: the identity and len(trajs)). Every rank
        shuffles that whole batch alike and splits it into the same mini-batches, backpropagates
        through its own members of each (any number of micro-batches, none included), and the
        ranks' gradients and loss denominators are summed: each step is the one a single process
        takes on the whole batch.
        """
        cfg, tcfg = self.config, self.config.train
        device = next(self.model.parameters()).device
        lengths = [len(t.token_ids) for t in trajs]
        positions = list(range(len(trajs))) if positions is None else positions
        batch_size = len(trajs) if batch_size is None else batch_size
        local = {position: i for i, position in enumerate(positions)}
        order_rng = random.Random(cfg.run.seed * 7919 + self.iteration)
        forward = self._needs_forward(trajs, advantages)
        totals: dict[str, float] = defaultdict(float)
        grad_norms = 0.0
        steps = 0
        shared_tokens = forwarded_tokens = 0
        self.model.train()
        for _ in range(tcfg.ppo_epochs):
            order = list(range(batch_size))
            order_rng.shuffle(order)
            size = math.ceil(len(order) / tcfg.mini_batches)
            for mb_start in range(0, len(order), size):
                mini = [local[p] for p in order[mb_start:mb_start + size] if p in local]
                # The loss is normalised over the whole mini-batch, skipped sequences included,
                # so skipping changes the cost of a step, never its gradient.
                used = [i for i in mini if forward[i]]
                denominator, used_denominator = self._denominator([trajs[i] for i in mini],
                                                                  [trajs[i] for i in used])
                self.optimizer.zero_grad(set_to_none=True)
                batches = self._collated(trajs, advantages, used, lengths, device)
                with self.gradient_sync.accumulating():
                    # FSDP: first passes that add nothing, until this rank runs as many as the
                    # busiest rank (every pass gathers the same shards). DDP: nothing to do.
                    self.gradient_sync.match_passes(len(batches))
                    for micro, batch, share in batches:
                        plan = self._prefix_plan([trajs[i] for i in micro])
                        shared_tokens += plan.saved_tokens if plan else 0
                        forwarded_tokens += plan.forwarded_tokens if plan else int(batch.attention_mask.sum())
                        with autocast(device, self.autocast):
                            loss, parts = self._loss(batch, plan)
                        # loss_scale (the world size) undoes DDP's mean over the ranks.
                        (loss * (share * self.gradient_sync.loss_scale / denominator)).backward()
                        for key, value in parts.items():  # diagnostics: mean over the used sequences
                            totals[key] += value * share / used_denominator
                self.gradient_sync.synchronise()  # every rank, whatever it backpropagated
                # (Under FSDP the gradients are shards: the norm is still that of the whole.)
                grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), tcfg.grad_clip)
                self.optimizer.step()
                self.scheduler.step()
                steps += 1
                grad_norms += float(whole_tensor(grad_norm))
        self.model.eval()
        # The diagnostics are each rank's part of a mean over every rank's sequences: they add up.
        counts = (sum(forward), len(forward), shared_tokens, forwarded_tokens)
        everyone = all_gather_objects((dict(totals), counts))
        totals = defaultdict(float)
        for rank_totals, _ in everyone:
            for key, value in rank_totals.items():
                totals[key] += value
        forwarded, sequences, shared_tokens, forwarded_tokens = (sum(c[k] for _, c in everyone) for k in range(4))
        metrics = {key: value / max(steps, 1) for key, value in totals.items()}
        metrics["policy/grad_norm"] = grad_norms / max(steps, 1)
        metrics["policy/lr"] = self.scheduler.get_last_lr()[0]
        metrics["policy/optimizer_steps"] = float(steps)
        metrics["perf/skipped_sequences"] = 1.0 - forwarded / max(1, sequences)
        metrics["perf/update_tokens_shared"] = float(shared_tokens)
        metrics["perf/update_tokens_forwarded"] = float(forwarded_tokens)
        return metrics

    def _collated(self, trajs: list[Trajectory], advantages: list[np.ndarray], used: list[int],
                  lengths: list[int], device: torch.device) -> list[tuple[list[int], Any, float]]:
        """The micro-batches of `used` that carry a loss: (indices, tensors, share) each."""
        batches = []
        for micro in self._micro_batches(trajs, used, lengths):
            batch = collate([trajs[i] for i in micro], [advantages[i] for i in micro],
                            self.tokenizer.pad_token_id, device)
            share = self._share(batch)
            if share > 0:
                batches.append((micro, batch, share))
        return batches

    def _micro_batches(self, trajs: list[Trajectory], used: list[int], lengths: list[int]) -> list[list[int]]:
        size = self.config.train.micro_batch_size
        if not self.config.train.shared_prefix:
            return micro_batches(used, lengths, size)
        return family_micro_batches(used, lengths, [trajs[i].group_id for i in range(len(trajs))], size)

    def _prefix_plan(self, trajs: list[Trajectory]) -> PrefixPlan | None:
        """Which sequences of a micro-batch share a prompt (a group's), when sharing is on."""
        if not (self.config.train.shared_prefix and self.gradient_sync.allows_shared_prefix):
            return None
        return plan_shared_prefixes([t.token_ids for t in trajs], [t.group_id for t in trajs])

    def _needs_forward(self, trajs: list[Trajectory], advantages: list[np.ndarray]) -> list[bool]:
        """Which sequences must go through forward/backward in the update.

        A sequence whose action tokens all have advantage 0 (e.g. every member of a GRPO group
        got the same reward) adds exactly nothing to the clipped policy loss or its gradient,
        so it is skipped unless a KL or entropy term, which every token feeds, is on.
        """
        acfg = self.config.algorithm
        if acfg.kl_coef > 0 or acfg.entropy_coef != 0:
            return [True] * len(trajs)
        return [bool(np.any(np.asarray(adv)[np.asarray(t.loss_mask, dtype=bool)] != 0))
                for t, adv in zip(trajs, advantages)]

    def _loss(self, batch, plan: PrefixPlan | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        acfg = self.config.algorithm
        logprobs, entropy = token_logprobs(self.model, batch.input_ids, batch.attention_mask,
                                           temperature=self.config.rollout.temperature,
                                           with_entropy=True, entropy_grad=acfg.entropy_coef != 0,
                                           prefix_plan=plan)
        loss, metrics = policy_loss(logprobs, batch.old_logprobs, batch.advantages, batch.loss_mask,
                                    clip_low=acfg.clip_low, clip_high=acfg.clip_high,
                                    dual_clip=acfg.dual_clip, agg=acfg.agg, level=acfg.level)
        parts = {"loss/policy": float(loss.item()), **metrics}
        mean_entropy = aggregate(entropy, batch.loss_mask, acfg.agg)
        parts["policy/entropy"] = float(mean_entropy.item())
        if acfg.entropy_coef:
            loss = loss - acfg.entropy_coef * mean_entropy
        if self.ref_model is not None:
            with torch.no_grad(), adapters_disabled(self.ref_model):
                ref, _ = token_logprobs(self.ref_model, batch.input_ids, batch.attention_mask,
                                        temperature=self.config.rollout.temperature, prefix_plan=plan)
            kl = aggregate(kl_penalty(logprobs, ref, kind=acfg.kl_kind), batch.loss_mask, acfg.agg)
            loss = loss + acfg.kl_coef * kl
            parts["loss/kl"] = float(kl.item())
        parts["loss/total"] = float(loss.item())
        return loss, parts

    def _share(self, batch) -> float:
        """This micro-batch's weight in its mini-batch under the aggregation mode."""
        return float(batch.num_tokens if self.config.algorithm.agg == "token-mean" else batch.num_sequences)

    def _denominator(self, *parts: list[Trajectory]) -> tuple[float, ...]:
        """The loss denominator of each list of trajectories under the aggregation mode (action
        tokens for token-mean, sequences with an action token for the seq-mean modes), summed
        over the ranks: each rank holds its share of a mini-batch, the denominator is the whole's."""
        if self.config.algorithm.agg == "token-mean":
            counts = [sum(t.num_action_tokens for t in trajs) for trajs in parts]
        else:
            counts = [sum(1 for t in trajs if t.num_action_tokens > 0) for trajs in parts]
        return tuple(max(1.0, total) for total in all_reduce_sum(*counts))

    # --- sinks -------------------------------------------------------------------------------

    def _log_trajectories(self, groups: list[Group], advantages: dict[int, np.ndarray]) -> None:
        """The iteration's first `log_trajectories` trajectories, group by group (a multiple of
        the group size keeps whole groups, for `agentrl view --tree`), each with its advantage:
        the mean over its action tokens, None when it was not trained on."""
        count = self.config.train.log_trajectories
        if not count:
            return
        trajectories = [t for g in groups for t in g.trajectories][:count]
        with (self.run_dir / "trajectories.jsonl").open("a", encoding="utf-8") as f:
            for traj in trajectories:
                advantage = advantages.get(id(traj))
                if advantage is not None:
                    on_actions = np.asarray(advantage)[np.asarray(traj.loss_mask, dtype=bool)]
                    advantage = float(on_actions.mean()) if on_actions.size else 0.0
                f.write(json.dumps({"iteration": self.iteration + 1, **traj.to_dict(),
                                    "advantage": advantage}) + "\n")


def _trainable(group: Group) -> list[Trajectory]:
    """The group's trajectories that say something about the policy: all but those the
    infrastructure ended."""
    return [t for t in group.trajectories if not t.infra_error]


def _mean_of_ranks(per_rank: list[dict[str, float]]) -> dict[str, float]:
    """Each key's mean over the ranks that report it (the strategy's diagnostics, e.g. arpo/)."""
    values: dict[str, list[float]] = defaultdict(list)
    for metrics in per_rank:
        for key, value in metrics.items():
            values[key].append(float(value))
    return {key: float(np.mean(found)) for key, found in values.items()}

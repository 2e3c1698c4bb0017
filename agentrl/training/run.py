"""A whole training run from one recipe: model, SFT warm-up, evaluation, RL, report.

Run directory (README, "Read the results"), `<run.out_dir>/<run.name>/`:

    config.yaml          the resolved recipe
    model_init/          the tiny model as built (when model.path is "tiny")
    sft_model/           the policy after the SFT warm-up (when sft.demos > 0)
    checkpoints/iter_*/  RL checkpoints (weights, optimizer, schedule, RNG, task counter)
    metrics.jsonl        one line per SFT log point and RL iteration
    tensorboard/         the same metrics as TensorBoard events
    trajectories.jsonl   sampled trajectories of every iteration
    eval/*.json          evaluation reports (metrics + trajectories)
    results.json         the before/after table; reward_curve.png

`--resume` skips the stages already done (built model, SFT, first evaluation) and continues RL
from the newest checkpoint with the same task order and RNG state.
"""

from __future__ import annotations

import random
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from rich.console import Console

from agentrl.config import Config, ConfigError, dump_config
from agentrl.envs import make_env as make_registered_env
from agentrl.envs.registry import import_env_module
from agentrl.eval.report import read_report, write_report
from agentrl.eval.runner import evaluate_recipe
from agentrl.eval.sources import eval_policy
from agentrl.eval.sources import report_path as eval_report_path
from agentrl.generation import Generator, close_generator, make_generator
from agentrl.models import build_tiny_model, load_model, resolve_autocast
from agentrl.rollout import collect_demonstrations
from agentrl.training.corpus import env_corpus, has_oracle
from agentrl.training.distributed import barrier, current_ranks, process_group
from agentrl.training.heap import retain_freed_memory
from agentrl.training.metrics import MetricsLogger, rewind_logs
from agentrl.training.progress import progress as _progress
from agentrl.training.progress import status
from agentrl.training.report import comparison_table, plot_reward_curve, write_results
from agentrl.training.ray_envs import recipe_env_hosts
from agentrl.training.rl import RLTrainer
from agentrl.training.sandbox_pool import check_sandbox_settings, demo_chunk
from agentrl.training.sft import sft_train

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class RunDirectoryExists(RuntimeError):
    """A run directory with checkpoints exists and --resume was not given."""


def env_factory(config: Config, *, evaluation: bool = False, demonstrations: bool = False,
                pool: Any = None, workers: Any = None) -> Callable[[], Any]:
    """A zero-argument constructor of the recipe's env (raises UnknownEnvError early).

    With `evaluation=True` the eval section's env kwargs (e.g. a held-out split) are merged in;
    with `demonstrations=True` the sft section's (e.g. only short tasks for the warm-up); a
    `pool` (the recipe's sandbox pool) is given to the env as its `pool` argument. With
    `workers` (the run's env workers, `ray.enabled`) the envs are built there and driven
    through RemoteEnv proxies; each worker gives them its own sandbox pool.
    """
    if workers is not None:
        kwargs = dict(config.env.kwargs)
        kwargs.update(config.eval.env_kwargs if evaluation else {})
        kwargs.update(config.sft.env_kwargs if demonstrations else {})
        return workers.factory(config.env.id, kwargs)
    for module in config.env.imports:
        import_env_module(module)  # a module that cannot be imported is an UnknownEnvError
    env_id, kwargs = config.env.id, dict(config.env.kwargs)
    if evaluation:
        kwargs.update(config.eval.env_kwargs)
    if demonstrations:
        kwargs.update(config.sft.env_kwargs)
    if pool is not None:
        kwargs["pool"] = pool
    make_registered_env(env_id, **kwargs).close()
    return lambda: make_registered_env(env_id, **kwargs)


def run_training(config: Config, *, resume: bool = False, console: Console | None = None,
                 evaluate_before: bool = True) -> dict[str, Any]:
    """Run the recipe end to end; returns the before/after evaluation results.

    Under torchrun every rank runs this: the process group lives for the length of the run
    (a world size that cannot share the groups is refused here, before anything runs), rank 0
    prints and writes, the other ranks are quiet and return no results.
    """
    console = console or Console()
    with process_group(config) as ranks:
        if not ranks.is_main:
            console = Console(quiet=True)
        _prepare_process(config)
        _check_recipe(config)  # before anything is started or written
        with recipe_env_hosts(config) as (pool, workers):  # a local sandbox pool, or Ray env workers
            return _run_training(config, pool, resume=resume, console=console,
                                 evaluate_before=evaluate_before, workers=workers)


def _check_recipe(config: Config) -> None:
    """Raise the recipe's mistakes that only the env reveals: an unknown env id
    (UnknownEnvError), demonstrations asked of an env without an oracle, a sandbox pool the env
    cannot take or too small for the episodes of a round (ConfigError)."""
    make_env = env_factory(config, demonstrations=True)
    if config.sft.demos > 0:
        env = make_env()
        try:
            env.reset(seed=config.sft.seed_offset)
            oracle = has_oracle(env)
        finally:
            env.close()
        if not oracle:
            raise ConfigError(
                f"sft.demos={config.sft.demos}: the env {config.env.id} has no oracle_action() to "
                "write demonstrations with; set sft.demos=0 (RL from the start) or give the env "
                "an oracle_action()")
    check_sandbox_settings(config)
    generation = config.generation
    if generation.backend == "openai" and generation.weight_sync == "none":
        raise ConfigError(
            "generation.backend=openai with weight_sync=none: the server would keep sampling from the "
            "starting weights while the trainer updates its own; for training use generation.backend=vllm "
            "(in-process) or a `vllm serve` started for weight sync (generation.weight_sync=vllm, "
            "docs/scale.md). weight_sync=none is for `agentrl eval`")


def _run_training(config: Config, pool: Any, *, resume: bool, console: Console,
                  evaluate_before: bool, workers: Any = None) -> dict[str, Any]:
    make_env = env_factory(config, pool=pool, workers=workers)
    make_eval_env = env_factory(config, evaluation=True, pool=pool, workers=workers)
    run_dir = Path(config.run.out_dir) / config.run.name
    if run_dir.exists() and (run_dir / "checkpoints").exists() and not resume:
        raise RunDirectoryExists(
            f"run directory {run_dir} already holds checkpoints; pass --resume to continue it "
            "or choose another name with run.name=..."
        )
    # Over several ranks, rank 0 builds the model, runs the SFT warm-up and the first evaluation
    # while the others wait here; they then load what it saved (the stages find it on disk).
    ranks = current_ranks()
    if not ranks.is_main:
        barrier()
    else:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "eval").mkdir(exist_ok=True)
        (run_dir / "config.yaml").write_text(dump_config(config))

    model, tokenizer = _policy(config, run_dir, make_env, console)
    results: dict[str, dict[str, Any]] = {}

    if config.sft.demos > 0:
        sft_dir = run_dir / "sft_model"
        if (sft_dir / "config.json").is_file():
            console.print(f"[dim]SFT warm-up already done: loading {sft_dir}[/dim]")
            model, tokenizer = load_model(sft_dir, dtype=_DTYPES[config.model.dtype], device=config.model.device)
        else:
            # Nothing but SFT logs before it ends: lines of an SFT run killed half-way go, so
            # the SFT that runs again writes its lines once.
            rewind_logs(run_dir, {})
            _sft(config, run_dir, model, tokenizer, console, pool, workers)
            with _written_whole(sft_dir) as partial:  # a kill never leaves half a model
                model.save_pretrained(partial)
                tokenizer.save_pretrained(partial)

    # With an SFT warm-up the adapters sit on sft_model, which their checkpoints must name.
    model = _with_adapters(config, model, console, base=run_dir / "sft_model" if config.sft.demos > 0 else None)
    generator = _generator(config, model, tokenizer)
    try:
        if evaluate_before and ranks.is_main:
            results["before RL"] = _evaluate_once(config, run_dir, "before_rl", generator, tokenizer,
                                                  make_eval_env, console)
        if ranks.is_main:
            barrier()  # the other ranks may load the model now
        trainer = RLTrainer(config, run_dir, model, tokenizer, make_env, generator=generator)
        if resume and trainer.resume():
            console.print(f"[bold]Resuming[/bold] RL from iteration {trainer.iteration}")
        _train_with_progress(trainer, console, make_eval_env)
        if not ranks.is_main:
            return {}  # rank 0 evaluates and reports

        results["after RL"] = _evaluate_once(config, run_dir, "after_rl", generator, tokenizer,
                                             make_eval_env, console, reuse=False)
    finally:
        close_generator(generator)
    write_results(run_dir, results, config.eval.k)
    plot_reward_curve(run_dir)
    console.print(comparison_table(results, config.eval.k))
    console.print(f"Run directory: {run_dir}")
    return results


# --- stages ----------------------------------------------------------------------------------


@contextmanager
def _written_whole(directory: Path) -> Iterator[Path]:
    """A temporary directory beside `directory` to write into, renamed into place only once
    the block ends without error: a run killed while writing leaves no half-written model
    where a resumed run would load it."""
    partial = directory.with_name(directory.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    yield partial
    shutil.rmtree(directory, ignore_errors=True)
    partial.rename(directory)


def _policy(config: Config, run_dir: Path, make_env: Callable[[], Any], console: Console):
    """The recipe's starting model and tokenizer (LoRA adapters, if any, come after SFT:
    `_with_adapters`; their target modules are checked here, before any SFT runs)."""
    model, tokenizer = _starting_model(config, run_dir, make_env, console)
    if config.model.lora is not None:
        from agentrl.models.lora import check_target_modules

        check_target_modules(model, config.model.lora)
    return model, tokenizer


def _starting_model(config: Config, run_dir: Path, make_env: Callable[[], Any], console: Console):
    dtype, device = _DTYPES[config.model.dtype], config.model.device
    if config.model.path != "tiny":
        return load_model(config.model.path, dtype=dtype, device=device)
    init_dir = run_dir / "model_init"
    if not (init_dir / "config.json").is_file():
        tiny = config.model.tiny
        with status(console, "Building the tiny model (tokenizer trained on the env's text)"):
            texts = env_corpus(make_env, range(config.sft.seed_offset, config.sft.seed_offset + 2000))
            with _written_whole(init_dir) as partial:  # a kill never leaves half a model
                build_tiny_model(texts, partial, vocab_size=tiny.vocab_size, hidden_size=tiny.hidden_size,
                                 num_layers=tiny.num_layers, num_heads=tiny.num_heads,
                                 num_kv_heads=tiny.num_kv_heads, intermediate_size=tiny.intermediate_size,
                                 seed=config.run.seed)
    return load_model(init_dir, dtype=dtype, device=device)


def _with_adapters(config: Config, model, console: Console, base: Path | None = None):
    """The policy RL trains: `model` itself, or with `model.lora` set, `model` wrapped in fresh
    LoRA adapters (agentrl.models.lora). The SFT warm-up, when there is one, has already
    trained every weight: adapters start on the SFT model, which stays frozen under them.
    `base`: the directory holding `model`'s weights, recorded in the adapter's checkpoints."""
    if config.model.lora is None:
        return model
    from agentrl.models.lora import apply_lora, trainable_parameters

    model = apply_lora(model, config.model.lora, base=base)
    trainable, total = trainable_parameters(model)
    console.print(f"[dim]LoRA adapters: {trainable:,} of {total:,} parameters train "
                  f"({100 * trainable / total:.2f}%)[/dim]")
    return model


def _sft(config: Config, run_dir: Path, model, tokenizer, console: Console, pool: Any = None,
         workers: Any = None) -> None:
    scfg = config.sft
    make_env = env_factory(config, demonstrations=True, pool=pool, workers=workers)
    seeds = range(scfg.seed_offset, scfg.seed_offset + scfg.demos)
    with status(console, f"Writing {scfg.demos} oracle demonstrations"):
        demos = collect_demonstrations(make_env, seeds, tokenizer,
                                       max_total_tokens=config.rollout.max_total_tokens,
                                       mistake_rate=scfg.mistake_rate, mistake_at=scfg.mistake_at,
                                       seed=config.run.seed, chunk=demo_chunk(config))
    logger = MetricsLogger(run_dir, tensorboard=True)
    with _progress(console) as progress:
        task = progress.add_task("SFT warm-up", total=None, stats="", line_every=10)

        def on_step(step: int, total: int, metrics: dict[str, float]) -> None:
            progress.update(task, completed=step, total=total,
                            stats=f"loss {metrics['sft/loss']:.3f}  acc {metrics['sft/token_accuracy']:.2f}")
            if step % 10 == 0 or step == total:
                logger.log(step, metrics)

        sft_train(model, tokenizer, demos, epochs=scfg.epochs, batch_size=scfg.batch_size, lr=scfg.lr,
                  warmup_steps=scfg.warmup_steps, seed=config.run.seed,
                  autocast=resolve_autocast(config.model.autocast, config.model.device), on_step=on_step)
    logger.close()


def _generator(config: Config, model, tokenizer) -> Generator:
    """The recipe's generator (`generation`) for `model`, shared by training and evaluation."""
    return make_generator(config.generation, model, tokenizer, max_batch_size=config.rollout.max_batch_size,
                          max_model_len=config.rollout.max_total_tokens,
                          autocast=resolve_autocast(config.model.autocast, config.model.device))


def _evaluate_once(config: Config, run_dir: Path, name: str, generator: Generator, tokenizer, make_env,
                   console: Console, reuse: bool = True) -> dict[str, Any]:
    """Evaluate on the recipe's held-out tasks (eval section) into run_dir/eval/<name>.json;
    with `reuse`, a report already there is read instead (a resumed run)."""
    path = run_dir / "eval" / f"{name}.json"
    if reuse and path.is_file():
        return read_report(path)["metrics"]
    ecfg = config.eval
    samples = f" x {ecfg.samples} samples" if ecfg.samples > 1 else ""
    with status(console, f"Evaluating on {ecfg.tasks} held-out tasks{samples} ({name})"):
        metrics, trajectories = evaluate_recipe(config, generator, tokenizer, make_env)
    write_report(path, metrics, trajectories, generation=config.generation.model_dump(mode="json"),
                 model=config.model.path)
    return metrics


def _train_with_progress(trainer: RLTrainer, console: Console, make_eval_env=None) -> None:
    """Train with a progress display (a bar, or a line per iteration without a terminal); every
    `train.eval_every` iterations, a held-out evaluation (eval/iter_NNNN.json, and its metrics
    under eval/ in metrics.jsonl)."""
    config = trainer.config
    total, every = config.train.iterations, config.train.eval_every
    with _progress(console) as progress:
        task = progress.add_task("RL", total=total, completed=trainer.iteration, stats="")

        def on_iteration(iteration: int, metrics: dict[str, float]) -> None:
            progress.update(task, completed=iteration, stats=(
                f"reward {metrics['reward/mean']:+.3f}  success {metrics['rollout/success_rate']:.2f}  "
                f"{metrics['perf/tokens_per_s']:.0f} tok/s"))
            # The last iteration is evaluated after training anyway ("after RL").
            # Over several ranks rank 0 evaluates; the others wait at their next collective.
            if (make_eval_env is not None and every and iteration % every == 0 and iteration < total
                    and trainer.ranks.is_main):
                held_out = _evaluate_once(config, trainer.run_dir, f"iter_{iteration:04d}", trainer.generator,
                                          trainer.tokenizer, make_eval_env, console)
                trainer.logger.log(iteration, {f"eval/{key}": value for key, value in held_out.items()
                                               if isinstance(value, (int, float))})

        trainer.on_iteration = on_iteration
        trainer.train()


def _prepare_process(config: Config) -> None:
    """Seed every RNG and apply `run.torch_threads` and `run.retain_freed_memory`, once per
    run, whatever the entry point."""
    seed = config.run.seed
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if config.run.torch_threads:
        torch.set_num_threads(config.run.torch_threads)
    if config.run.retain_freed_memory:
        retain_freed_memory()


def run_sft_only(config: Config, *, console: Console | None = None) -> Path:
    """Only the SFT warm-up stage; returns the saved model directory."""
    console = console or Console()
    _prepare_process(config)
    _check_recipe(config)
    run_dir = Path(config.run.out_dir) / config.run.name
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(dump_config(config))
    make_env = env_factory(config)
    model, tokenizer = _policy(config, run_dir, make_env, console)
    with recipe_env_hosts(config) as (pool, workers):
        _sft(config, run_dir, model, tokenizer, console, pool, workers)
    out = run_dir / "sft_model"
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    console.print(f"SFT model saved to {out}")
    return out


def run_eval_only(config: Config, model_path: Path | None = None, *, tokenizer_path: Path | None = None,
                  report: Path | None = None, console: Console | None = None) -> tuple[dict[str, Any], Path]:
    """Evaluate the recipe's generator on its held-out tasks; returns (metrics, report path).

    The generator samples from the checkpoint `model_path` (backends hf and vllm) or from the
    server of `generation` (backend openai, with the tokenizer of `tokenizer_path` or
    `model_path`: agentrl.eval.sources). The report goes to `report`, by default
    <model_path>/eval/held_out.json (or <run.out_dir>/<run.name>/eval/held_out.json).
    """
    console = console or Console()
    _prepare_process(config)
    env_factory(config, evaluation=True)  # an unknown env id fails here, before the model loads
    check_sandbox_settings(config)
    model, tokenizer = eval_policy(config, model_path, tokenizer_path, dtype=_DTYPES[config.model.dtype])
    path = Path(report) if report is not None else eval_report_path(config, model_path)
    generator = _generator(config, model, tokenizer)  # a server is checked here, before any env starts
    try:
        with recipe_env_hosts(config) as (pool, workers):
            make_env = env_factory(config, evaluation=True, pool=pool, workers=workers)
            samples = f" x {config.eval.samples} samples" if config.eval.samples > 1 else ""
            with status(console, f"Evaluating on {config.eval.tasks} held-out tasks{samples}"):
                metrics, trajectories = evaluate_recipe(config, generator, tokenizer, make_env)
    finally:
        close_generator(generator)
    source = model_path if model_path is not None else (None if model is None else config.model.path)
    write_report(path, metrics, trajectories, generation=config.generation.model_dump(mode="json"),
                 model=None if source is None else str(source))
    return metrics, path

"""The `agentrl` command.

    agentrl train RECIPE [section.field=value ...] [--resume]
    agentrl sft RECIPE [overrides]          the SFT warm-up stage only
    agentrl eval RECIPE --model PATH        held-out evaluation of a checkpoint (pass@k, Succ@k)
    agentrl eval RECIPE generation=... --tokenizer DIR   the same, of an OpenAI-compatible server
    agentrl demo [--task search|arithmetic] [overrides]   an embedded demo (tiny model, SFT, GRPO, report)
    agentrl bench [NAME ...]                list the benchmarks or run them
    agentrl view RUN_DIR                    settings, results, curves and trajectories of a run
    agentrl view RUN_DIR --tree [--iteration N] [--group G]   one group's rollouts as a tree
    agentrl env list | check ENV_ID | play ENV_ID   (--import MODULE, or MODULE:ID, for your own env)
    agentrl sandbox build | doctor
    agentrl serve-retriever ...

Errors a user can cause (bad recipe, unknown env id, a chat template that is not append-safe)
end with one line naming the cause and exit code 2, never with a traceback.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any, Callable, List, NoReturn, Optional

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Reinforcement learning of multi-turn LLM agents with tools.")
env_app = typer.Typer(no_args_is_help=True, help="List, check and play environments.")
app.add_typer(env_app, name="env")

console = Console()
err_console = Console(stderr=True)


def _fail(message: str, code: int = 2) -> NoReturn:
    err_console.print(f"[bold red]error:[/bold red] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


# The errors a user can cause, by the module that defines them. A module that was never
# imported cannot have raised its error, so recognising one never imports the training stack
# (seconds of torch and transformers for a command such as `agentrl env check`).
_USER_ERRORS = {
    "agentrl.config": ("ConfigError",),
    "agentrl.envs.registry": ("UnknownEnvError",),
    "agentrl.training.run": ("RunDirectoryExists",),
    "agentrl.rollout.chat": ("TemplateNotAppendSafe", "ChatTemplateMissing"),
    "agentrl.generation.openai": ("ServerUnavailable", "TokenizerMismatch"),
}


def _is_user_error(exc: BaseException) -> bool:
    if isinstance(exc, FileNotFoundError):
        return True
    return any(isinstance(exc, getattr(sys.modules[module], name))
               for module, names in _USER_ERRORS.items() if module in sys.modules for name in names)


def _user_errors(fn: Callable[[], Any]) -> Any:
    """Run `fn`, turning the errors a user can cause into one line and exit code 2."""
    try:
        return fn()
    except KeyboardInterrupt:
        _fail("interrupted; the run directory is resumable: run the same command with --resume", 130)
    except Exception as exc:
        if not _is_user_error(exc):
            raise
        lines = [line.strip() for line in str(exc).strip("'\"").splitlines()]
        _fail(" ".join(line for line in lines if line))  # one line, whatever the message holds


def _load(recipe: Optional[Path], overrides: list[str]):
    from agentrl.config import load_config

    return load_config(recipe, overrides)


@app.command()
def train(
    recipe: Path = typer.Argument(..., help="YAML recipe"),
    overrides: Optional[List[str]] = typer.Argument(None, help="section.field=value overrides"),
    resume: bool = typer.Option(False, "--resume", help="continue from the last checkpoint"),
) -> None:
    """Train a policy with the recipe: (SFT warm-up), evaluation, RL, evaluation."""
    from agentrl.training.run import run_training

    _user_errors(lambda: run_training(_load(recipe, overrides or []), resume=resume, console=console))


@app.command()
def demo(
    overrides: Optional[List[str]] = typer.Argument(None, help="section.field=value overrides"),
    task: str = typer.Option("search", "--task", help="which embedded demo: search or arithmetic"),
    resume: bool = typer.Option(False, "--resume", help="continue from the last checkpoint"),
) -> None:
    """The main demo: tiny model, SFT on oracle demos, then GRPO (default: a SearchQA search agent)."""
    from agentrl.training.demos import demo_overrides
    from agentrl.training.run import run_training

    def go() -> None:
        try:
            base = demo_overrides(task)
        except ValueError as exc:
            _fail(str(exc))
        run_training(_load(None, [*base, *(overrides or [])]), resume=resume, console=console)

    _user_errors(go)


@app.command()
def sft(
    recipe: Path = typer.Argument(..., help="YAML recipe"),
    overrides: Optional[List[str]] = typer.Argument(None, help="section.field=value overrides"),
) -> None:
    """Only the SFT warm-up on the env's oracle demonstrations (saved to RUN_DIR/sft_model)."""
    from agentrl.training.run import run_sft_only

    _user_errors(lambda: run_sft_only(_load(recipe, overrides or []), console=console))


@app.command("eval")
def eval_command(
    recipe: Path = typer.Argument(..., help="YAML recipe (its env, eval and generation sections are used)"),
    overrides: Optional[List[str]] = typer.Argument(None, help="section.field=value overrides"),
    model: Optional[Path] = typer.Option(None, "--model", help="checkpoint directory to sample from "
                                         "(generation hf or vllm)"),
    tokenizer: Optional[Path] = typer.Option(None, "--tokenizer", help="the served model's tokenizer "
                                             "directory (generation openai; default: --model)"),
    report: Optional[Path] = typer.Option(None, "--report", help="report file (default: "
                                          "MODEL/eval/held_out.json, else RUN_DIR/eval/held_out.json)"),
) -> None:
    """Evaluate a checkpoint or a server on held-out tasks: pass@k over eval.samples episodes
    per task, Succ@1, Succ@k, unique-answer ratio, turns."""
    from agentrl.eval.report import eval_table
    from agentrl.training.run import run_eval_only

    def go() -> None:
        config = _load(recipe, overrides or [])
        metrics, path = run_eval_only(config, model, tokenizer_path=tokenizer, report=report, console=console)
        console.print(eval_table(metrics, config.eval.k))
        console.print(f"Report: {path}", soft_wrap=True, highlight=False)

    _user_errors(go)


@app.command()
def view(
    run_dir: Path = typer.Argument(..., help="a run directory, e.g. runs/demo"),
    trajectories: int = typer.Option(2, help="sampled trajectories to show (0 = none)"),
    iteration: Optional[int] = typer.Option(None, help="whose trajectories (default: the last logged)"),
    tree: bool = typer.Option(False, "--tree", help="draw one group's rollouts as a tree of turns "
                              "(shared turns once) instead of the summary"),
    group: Optional[int] = typer.Option(None, help="with --tree: which group (default: the first logged)"),
) -> None:
    """Summarise a run directory: settings, before/after table, training curves, trajectories.

    With --tree: one group's trajectories as the tree they branched into (Tree-GRPO).
    """

    def go() -> None:
        if group is not None and not tree:
            _fail("--group picks the group that --tree draws; add --tree")
        try:
            if tree:
                from agentrl.viewer import view_tree

                view_tree(run_dir, console, iteration=iteration, group=group)
            else:
                from agentrl.viewer import view_run

                view_run(run_dir, console, trajectories=trajectories, iteration=iteration)
        except ValueError as exc:
            _fail(str(exc))

    _user_errors(go)


def _benchmarks_dir() -> Path:
    """The repository's benchmarks/ folder (benchmarks are scripts, not part of the package)."""
    for root in (Path.cwd(), Path(__file__).resolve().parents[1]):
        if (root / "benchmarks").is_dir():
            return root / "benchmarks"
    _fail("no benchmarks/ folder found; run `agentrl bench` from the agentrl repository")


def _first_doc_line(script: Path) -> str:
    import ast

    return (ast.get_docstring(ast.parse(script.read_text())) or "").partition("\n")[0]


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def bench(
    ctx: typer.Context,
    names: Optional[List[str]] = typer.Argument(None, help="benchmarks to run (default: list them)"),
) -> None:
    """List the benchmarks, or run the named ones (extra --options go to the script).

    Results are JSON files and tables; docs/benchmarks.md, docs/tools.md, docs/sandboxes.md,
    docs/generation.md and docs/tree_grpo.md hold the measured figures. `make bench` runs the standard set.
    """
    import subprocess

    folder = _benchmarks_dir()
    available = {p.stem: p for p in sorted(folder.glob("*.py")) if not p.stem.startswith("_")}
    if not names:
        table = Table(title=f"Benchmarks ({folder})")
        table.add_column("name")
        table.add_column("what it measures")
        for name, path in available.items():
            table.add_row(name, _first_doc_line(path))
        console.print(table)
        return
    unknown = [n for n in names if n not in available]
    if unknown:
        _fail(f"unknown benchmark {unknown[0]!r}; available: {', '.join(available)}")
    for name in names:
        console.print(f"[bold]{name}[/bold]")
        code = subprocess.call([sys.executable, str(available[name]), *ctx.args])
        if code != 0:
            _fail(f"benchmark {name!r} exited with status {code}", code=code)


@env_app.command("list")
def env_list(
    imports: Optional[List[str]] = typer.Option(None, "--import", help="a module that registers envs of "
                                                "your own (repeatable), e.g. --import mypackage.envs"),
) -> None:
    """The registered agentrl environments (and those your --import modules register)."""

    def go() -> None:
        from agentrl.envs import registered_envs

        _import_env_modules(imports)
        table = Table("env id", "description")
        for env_id, description in registered_envs().items():
            table.add_row(env_id, description)
        console.print(table)

    _user_errors(go)


_IMPORT_HELP = ("a module that registers your env (repeatable), e.g. --import mypackage.envs; "
                "or write the id as MODULE:ID")


def _import_env_modules(modules: Optional[List[str]]) -> None:
    from agentrl.envs.registry import import_env_module

    for module in modules or []:
        import_env_module(module)


@env_app.command("check")
def env_check(
    env_id: str = typer.Argument(..., help="e.g. agentrl/Arithmetic-v0, or MODULE:ID for your own"),
    imports: Optional[List[str]] = typer.Option(None, "--import", help=_IMPORT_HELP),
) -> None:
    """Run gymnasium's env checker and agentrl's contract checks on an env."""

    def go() -> None:
        from gymnasium.utils.env_checker import check_env

        from agentrl.envs import make_env

        _import_env_modules(imports)
        env = make_env(env_id)
        try:
            check_env(env, skip_render_check=True)
            observation, info = env.reset(seed=0)
            missing = [k for k in ("anchor", "success", "action_valid", "tool_calls") if k not in info]
            if missing:
                _fail(f"{env_id}: reset() info lacks the keys {missing} (see agentrl.envs.make_info)", 1)
            forked = env.fork()
            forked.close()
        finally:
            env.close()
        console.print(f"[green]ok[/green] {env_id} passes gymnasium's check_env and agentrl's checks",
                      soft_wrap=True)

    _user_errors(go)


@env_app.command("play")
def env_play(
    env_id: str = typer.Argument(..., help="e.g. agentrl/ArithmeticTryAgain-v0, or MODULE:ID"),
    seed: int = typer.Option(0, help="task seed"),
    imports: Optional[List[str]] = typer.Option(None, "--import", help=_IMPORT_HELP),
) -> None:
    """Play an env yourself: read the observations, type the actions."""

    def go() -> None:
        from agentrl.envs.play import play

        _import_env_modules(imports)
        play(env_id, seed=seed)

    _user_errors(go)


def _mount_optional(module: str, attribute: str, name: str) -> None:
    """Mount a sub-command app that lives in another room, if that room is installed."""
    try:
        sub = getattr(importlib.import_module(module), attribute)
    except ModuleNotFoundError as exc:
        if exc.name != module:
            raise
        return
    if isinstance(sub, typer.Typer):
        app.add_typer(sub, name=name)
    else:
        app.command(name)(sub)


_mount_optional("agentrl.sandboxes.cli", "sandbox_app", "sandbox")
_mount_optional("agentrl.tools.cli", "serve_retriever", "serve-retriever")


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())

"""`play`: a scripted person plays envs (SearchQA, a user's own) through the same input/print hooks
as a terminal."""

from __future__ import annotations

import agentrl.envs  # noqa: F401
from agentrl.envs import TextEnv, make_env, make_info, register
from agentrl.envs.play import play


def test_play_an_episode_with_typed_actions_and_the_oracle():
    env = make_env("agentrl/SearchQA-v0")
    env.reset(seed=0)
    task = env.episode.task
    typed = iter(["I will look it up.", f"<search>{task.oracle[0][1]['query']}</search>", "hello", "",
                  *[":oracle"] * 5])
    shown: list[str] = []
    summary = play("agentrl/SearchQA-v0", seed=0, input_fn=lambda prompt: next(typed), print_fn=shown.append)
    text = "\n".join(shown)
    assert task.prompt in text
    assert f"Doc 1 (Title: {task.oracle[0][1]['query']})" in text  # the multi-line turn ran the search
    assert "[user (invalid action)]\nInvalid action: no tool call and no answer." in text
    assert summary["success"] and summary["return"] == 1.0
    assert text.endswith(f"[episode over: solved; return 1 in {summary['turns']} turns]")


def test_play_stops_on_quit_and_end_of_input():
    def no_more_input(prompt):
        raise EOFError

    assert play("agentrl/SearchQA-v0", input_fn=lambda p: ":quit", print_fn=lambda s: None)["turns"] == 0
    assert play("agentrl/SearchQA-v0", input_fn=no_more_input, print_fn=lambda s: None)["turns"] == 0


class _WrappedGame(TextEnv):
    """A wrapper of another library's env, which names its game `env_id` (TextArena does)."""

    def __init__(self, env_id: str = "Guess-v0", render_mode: str | None = None) -> None:
        super().__init__(render_mode=render_mode)
        self.game = env_id

    def reset(self, *, seed: int | None = None, options=None):
        super().reset(seed=seed)
        return f"You play {self.game}. Say done.", make_info(anchor=self.game)

    def step(self, action: str):
        won = action.strip() == "done"
        return "", float(won), True, False, make_info(anchor=self.game, success=won)


def test_a_users_env_may_take_an_argument_named_env_id():
    register("custom/WrappedGame-v0", f"{__name__}:_WrappedGame", "a game of another library",
             env_id="Wordle-v0")
    assert make_env("custom/WrappedGame-v0").game == "Wordle-v0"
    assert make_env("custom/WrappedGame-v0", env_id="Sudoku-v0").game == "Sudoku-v0"
    shown: list[str] = []
    typed = iter(["done", ""])  # a turn ends at an empty line
    summary = play("custom/WrappedGame-v0", input_fn=lambda prompt: next(typed), print_fn=shown.append,
                   env_id="Chess-v0")
    assert "You play Chess-v0. Say done." in "\n".join(shown) and summary["success"]

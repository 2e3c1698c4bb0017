"""`agentrl env play ENV_ID`: a person plays an env in the terminal.

You see the system prompt and each observation, and type the model's turn. A turn may span
several lines: it ends at a line holding one of the env's stop strings (a closing tag such as
`</search>`) or at an empty line. Commands on a line of their own:

    :oracle   play the oracle's action for this turn (when the env has one)
    :quit     stop the episode
"""

from __future__ import annotations

from typing import Any, Callable

from agentrl.envs.registry import make_env


def _read_action(env: Any, input_fn: Callable[[str], str]) -> str:
    lines: list[str] = []
    while True:
        line = input_fn("> " if not lines else ". ")
        if not lines and line.strip() in (":oracle", ":quit"):
            return line.strip()
        if not line.strip() and lines:
            break
        lines.append(line)
        if any(stop in line for stop in env.stop_strings):
            break
    return "\n".join(lines)


def play(
    env_id: str,
    /,
    seed: int = 0,
    input_fn: Callable[[str], str] = input,
    print_fn: Callable[[str], None] = print,
    **env_kwargs: Any,
) -> dict[str, Any]:
    """Play one episode of `env_id` interactively; returns {"return", "success", "turns"}.

    `input_fn` and `print_fn` default to the terminal; tests pass their own. `env_kwargs` go to
    the env's constructor (`env_id` is positional-only, so one of them may be named `env_id`).
    """
    env = make_env(env_id, **env_kwargs)
    total, success, turns = 0.0, False, 0
    try:
        observation, _ = env.reset(seed=seed)
        if env.system_prompt:
            print_fn(f"[system]\n{env.system_prompt}\n")
        print_fn(f"[{env_id}, seed {seed}, at most {env.max_turns} turns; end a turn with an empty line, "
                 "':oracle' plays the oracle's move, ':quit' stops]")
        print_fn(f"[user]\n{observation}")
        while True:
            try:
                action = _read_action(env, input_fn)
            except EOFError:
                action = ":quit"
            if action == ":quit":
                print_fn("[stopped]")
                break
            if action == ":oracle":
                try:
                    action = env.oracle_action()
                except NotImplementedError as exc:
                    print_fn(f"[no oracle: {exc}]")
                    continue
                print_fn(f"[oracle]\n{action}")
            observation, reward, terminated, truncated, info = env.step(action)
            turns += 1
            total += float(reward)
            success = bool(info.get("success", False))
            note = "" if info.get("action_valid", True) else " (invalid action)"
            if observation:
                print_fn(f"[{env.observation_role}{note}]\n{observation}")
            if terminated or truncated:
                ended = "solved" if success else ("out of turns" if truncated else "not solved")
                print_fn(f"[episode over: {ended}; return {total:g} in {turns} turns]")
                break
    finally:
        env.close()
    return {"return": total, "success": success, "turns": turns}

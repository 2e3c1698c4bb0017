"""`agentrl/Code-v0`: write a function that passes hidden unit tests, trying code with python.

The prompt names the function, describes it and shows one example. The agent may run code in
its sandboxed interpreter, then submits the function in `<answer>...</answer>` (code fences are
fine). The reward is the fraction of hidden tests passed, run in a fresh sandbox; success means
all of them pass.

Grading compares results as canonical JSON (so `True` is not `1`, and an object that claims to
equal everything does not pass). It guards against accidental passes, not against a program
written to attack the grader: the candidate runs in the same interpreter as the grading loop.
"""

from __future__ import annotations

import json
import secrets
from typing import Any

from agentrl.envs.parsing import FormatSpec, strip_code_fence
from agentrl.envs.tasks.code_problems import PROBLEMS, Problem
from agentrl.envs.tool_env import Episode, Score, Task, ToolEnv
from agentrl.tools.python import PythonTool

SYSTEM_PROMPT = (
    "Write the Python function. Test it with the python tool, then give the whole function in "
    "<answer>...</answer>.\n{tools}"
)

_GRADER = """
import json as _json, sys as _sys
_dumps, _write = _json.dumps, _sys.__stdout__.write
_cases = _json.loads({cases!r})
_ns = {{}}
try:
    exec(compile({code!r}, "<answer>", "exec"), _ns)
    _fn = _ns.get({name!r})
except BaseException:
    _fn = None
_passed = 0
for _args, _expected in _cases:
    try:
        if _fn is not None and _dumps(_fn(*_args), sort_keys=True) == _dumps(_expected, sort_keys=True):
            _passed += 1
    except BaseException:
        pass
_write("\\n{marker} %d\\n" % _passed)
"""


def problem_task(problem: Problem) -> Task:
    """The task of one problem. The oracle tries its solution on the example, which prints
    `trial_output(problem)`, then submits it."""
    prompt = f"Write a Python function {problem.signature} that {problem.description}\nExample: {problem.example}"
    first_args = ", ".join(repr(a) for a in problem.tests[0][0])
    trial = f"{problem.solution}\nprint({problem.name}({first_args}))"
    return Task(prompt=prompt, answer=problem.name, id=problem.name, data={"problem": problem},
                oracle=(("python", {"code": trial}), ("answer", {"answer": problem.solution})))


def trial_output(problem: Problem) -> str:
    """What the oracle's trial prints: the example's expected result (its solution passes it)."""
    return str(problem.tests[0][1])


def grade(code: str, problem: Problem, sandbox: Any, timeout: float = 10.0) -> tuple[int, int]:
    """(tests passed, tests) of `code` on `problem`, run in `sandbox`."""
    marker = f"__agentrl_passed_{secrets.token_hex(8)}__"
    cases = json.dumps([[list(args), expected] for args, expected in problem.tests])
    result = sandbox.run(_GRADER.format(cases=cases, code=code, name=problem.name, marker=marker), timeout=timeout)
    for line in reversed(result.stdout.splitlines()):
        if line.startswith(marker):
            return int(line.split()[1]), len(problem.tests)
    return 0, len(problem.tests)


class Code(ToolEnv):
    """Function-writing tasks with hidden tests and a python tool.

    Args:
        problems: the problem set (default: the 28 built-in problems).
        sandbox_backend: "auto", "docker" or "bwrap" for the interpreter and the grader.
        pool: an `agentrl.sandboxes.SandboxPool` to take sandboxes from instead (a recipe's
            `sandbox` section starts one for the run). An episode holds one sandbox at a time.
        call_format, max_turns, max_tool_calls, call_timeout, render_mode: see `ToolEnv`.
    """

    def __init__(
        self,
        problems: tuple[Problem, ...] = PROBLEMS,
        sandbox_backend: str = "auto",
        pool: Any = None,
        code_timeout: float = 5.0,
        call_format: FormatSpec = "xml",
        max_turns: int = 4,
        max_tool_calls: int = 3,
        call_timeout: float = 30.0,
        render_mode: str | None = None,
    ) -> None:
        self.sandbox_backend = sandbox_backend
        self.pool = pool
        self.code_timeout = code_timeout
        super().__init__(
            tools=[PythonTool(pool, backend=sandbox_backend, timeout=code_timeout)],
            tasks=[problem_task(p) for p in problems],
            reward_fn=self._reward,
            call_format=call_format,
            max_turns=max_turns,
            max_tool_calls=max_tool_calls,
            max_calls_per_turn=1,
            call_timeout=call_timeout,
            system_prompt=SYSTEM_PROMPT,
            render_mode=render_mode,
        )

    def oracle_transcript(self) -> list[tuple[str, str]]:
        """The oracle episode as playing it would show it, without starting a sandbox (for the
        tokenizer corpus: thousands of episodes, two sandboxes each if played)."""
        if self.episode is None:
            raise RuntimeError("oracle_transcript() called before reset()")
        task = self.episode.task
        (tool, trial), (_, answer) = task.oracle
        return [
            ("assistant", self.format.render_call(tool, trial, self.tools)),
            (self.observation_role, self.format.render_results([trial_output(task.data["problem"])])),
            ("assistant", self.format.render_answer(answer["answer"])),
        ]

    def _reward(self, task: Task, episode: Episode) -> Score:
        if episode.answer is None:
            return Score(0.0, False)
        # The episode is over: give its interpreter back before grading takes a sandbox, so an
        # episode never holds two. Otherwise a pool of N sandboxes and N episodes grading at
        # once wait for each other forever.
        self.tools["python"].reset()
        passed, total = self._grade(strip_code_fence(episode.answer), task.data["problem"])
        return Score(passed / total, passed == total)

    def _grade(self, code: str, problem: Problem) -> tuple[int, int]:
        """Grade in a fresh sandbox, so nothing the agent left in its interpreter interferes."""
        from agentrl.sandboxes import create

        if self.pool is not None:
            with self.pool.sandbox() as sandbox:
                return grade(code, problem, sandbox, self.code_timeout * 2)
        with create(self.sandbox_backend, timeout=self.code_timeout * 2) as sandbox:
            return grade(code, problem, sandbox, self.code_timeout * 2)

"""Tool-call formats: turning a model's turn into tool calls or a final answer.

Two formats are built in:

- `XmlFormat`: one tag per tool, the body is the tool's primary argument, as in Search-R1 and
  ARPO: `<search>capital of Oskaria</search>`, `<python>print(2**10)</python>`,
  `<answer>Lumeva</answer>`. The tag names are configurable.
- `HermesFormat`: `<tool_call>{"name": "search", "arguments": {"query": "..."}}</tool_call>`,
  the format of Qwen and Hermes chat templates, plus `<answer>...</answer>` for the final answer.

A format's `template_tools` says whether the chat template should also get the tools' JSON
specs: Hermes-style models are trained to read them there, while an XML tag format is fully
described by its `instructions` in the system prompt (specs as well would describe every tool
twice).

Both tolerate what models really write: a last call left unterminated at end of sequence
(generation stopped by EOS or the token limit, even mid closing tag), code fences around
code or JSON, and `<think>...</think>` reasoning (ignored, so a tag mentioned while thinking is
not a call). A last call whose closing tag is botched (`<search> Gufas</</`) is refused.

The first complete tag decides what the turn is: if it is the answer, the turn answers (later
calls are ignored); otherwise the turn's calls run (a later answer is ignored). An answer tag
with nothing but whitespace inside is not an answer but a malformed turn (`empty_answer`).

Every way a turn can be malformed gives one `ActionError` with a short, stable message for the
model (the same mistake always reads the same, so a small model can learn from it) and a `kind`
that the env counts in its metrics.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import re
from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping, Protocol, Sequence, Union

import pydantic

from agentrl.tools.base import Tool


class InvalidKind(str, enum.Enum):
    """Why an action was invalid (metric names: `invalid/<value>`)."""

    NO_ACTION = "no_action"            # neither a tool call nor an answer
    INVALID_JSON = "invalid_json"      # a Hermes call whose body is not JSON
    MALFORMED_CALL = "malformed_call"  # Hermes JSON that is not {"name", "arguments"}; an XML call closed badly
    UNKNOWN_TOOL = "unknown_tool"      # a tool name (or XML tag) the env does not have
    INVALID_ARGUMENTS = "invalid_arguments"  # arguments that violate the tool's schema
    TOO_MANY_CALLS = "too_many_calls"  # more calls in one turn than allowed
    TOOL_BUDGET = "tool_budget"        # the episode's tool-call budget is spent (set by ToolEnv)
    EMPTY_ANSWER = "empty_answer"      # an answer tag with nothing but whitespace inside


@dataclass(frozen=True)
class ActionError:
    """A malformed action: its kind and the message shown to the model."""

    kind: InvalidKind
    message: str


@dataclass(frozen=True)
class ToolCall:
    """One parsed, validated tool call. `args` is the tool's pydantic argument model instance."""

    name: str
    arguments: dict[str, Any]
    args: Any = field(default=None, compare=False, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "arguments": self.arguments}


@dataclass
class ParsedAction:
    """What a turn asked for: tool calls, a final answer, or an error (exactly one of them)."""

    calls: list[ToolCall] = field(default_factory=list)
    answer: str | None = None
    error: ActionError | None = None

    @property
    def valid(self) -> bool:
        return self.error is None


class ToolCallFormat(Protocol):
    """How tool calls are written, parsed, and how results are shown back.

    `template_tools` (optional, True when missing): hand the tools' JSON specs to the chat
    template too.
    """

    answer_tag: str

    def parse(self, text: str, tools: Mapping[str, Tool], max_calls: int = 8) -> ParsedAction: ...

    def stop_strings(self, tools: Mapping[str, Tool]) -> tuple[str, ...]: ...

    def instructions(self, tools: Mapping[str, Tool]) -> str: ...

    def render_call(self, name: str, arguments: Mapping[str, Any], tools: Mapping[str, Tool]) -> str: ...

    def render_answer(self, answer: str) -> str: ...

    def render_results(self, results: Sequence[str]) -> str: ...


# --- shared helpers ----------------------------------------------------------------------------

_THINK = re.compile(r"<think>.*?</think>", re.DOTALL)
_FENCE = re.compile(r"^\s*```[\w+-]*[ \t]*\n?(.*?)\n?```\s*$", re.DOTALL)


def strip_think(text: str) -> str:
    """Drop `<think>...</think>` blocks: tags written while reasoning are not actions."""
    return _THINK.sub("", text)


def strip_code_fence(body: str) -> str:
    """`"```python\\nx = 1\\n```"` -> `"x = 1"`; text without a fence is only stripped."""
    match = _FENCE.match(body)
    return (match.group(1) if match else body).strip()


def _names(tools: Mapping[str, Any]) -> str:
    return ", ".join(sorted(tools)) or "(none)"


def validate_call(name: str, arguments: dict[str, Any], tools: Mapping[str, Tool]) -> ToolCall | ActionError:
    """Check the tool exists and the arguments fit its schema; the error names what is wrong."""
    tool = tools.get(name)
    if tool is None:
        return ActionError(InvalidKind.UNKNOWN_TOOL, f"Unknown tool '{name}'. Valid tools: {_names(tools)}.")
    try:
        args = tool.validate(arguments)
    except pydantic.ValidationError as exc:
        first = exc.errors()[0]
        path = ".".join(str(part) for part in first["loc"]) or "(arguments)"
        return ActionError(
            InvalidKind.INVALID_ARGUMENTS, f"Invalid arguments for tool '{name}': {path}: {first['msg']}."
        )
    return ToolCall(name=name, arguments=dict(arguments), args=args)


def answer_action(body: str, answer_tag: str) -> ParsedAction:
    """The turn's final answer, stripped; an empty one is a malformed answer, not an answer.

    `<answer></answer>` names no answer at all; taking it as one would let a policy end an
    episode for free and dodge the format penalty of rewards that have one (UFO, ARPO).
    """
    answer = body.strip()
    if not answer:
        return ParsedAction(error=ActionError(
            InvalidKind.EMPTY_ANSWER,
            f"Invalid action: the answer is empty. Write it inside <{answer_tag}>...</{answer_tag}>.",
        ))
    return ParsedAction(answer=answer)


def _too_many(count: int, max_calls: int) -> ActionError:
    return ActionError(
        InvalidKind.TOO_MANY_CALLS, f"Too many tool calls: {count} in one turn, at most {max_calls} allowed."
    )


# --- XML tags ------------------------------------------------------------------------------------

_TAG_PAIR = re.compile(r"<([A-Za-z_][\w-]*)>(.*?)</\1>", re.DOTALL)
_OPEN_TAG = re.compile(r"<([A-Za-z_][\w-]*)>")
# Every `</`, with the tag name it closes when it starts a complete closing tag such as
# `</div>`; without one (group 1 is None) it is a close the model botched.
_CLOSE = re.compile(r"</(?:([A-Za-z_][\w-]*)>)?")


@dataclass
class XmlFormat:
    """`<tag>body</tag>` calls; the body fills the tool's primary argument.

    `tags` maps tag -> tool name; by default every tool is called by its own name. Tags in
    `ignore_tags` (reasoning, echoed results) are not actions; any other tag pair is an
    unknown-tool error.

    `body_prefix` is written between the opening tag and the body when rendering a call or an
    answer (the oracle's demonstrations); parsing strips it, so either form is accepted. With
    `" "` a name is tokenised in `<search> Kunufu</search>` exactly as in running text
    (" Kunufu"), not as ">Kunufu"; a small model then copies names from passages into calls
    token for token, which it learns much faster (docs/experiments/search_demo_tuning.md).
    """

    tags: dict[str, str] | None = None
    answer_tag: str = "answer"
    result_tag: str = "result"
    ignore_tags: tuple[str, ...] = ("think", "reasoning", "result", "information")
    body_prefix: str = ""
    template_tools: ClassVar[bool] = False  # the tags are described by `instructions`

    def _tag_map(self, tools: Mapping[str, Tool]) -> dict[str, str]:
        return dict(self.tags) if self.tags is not None else {name: name for name in tools}

    def parse(self, text: str, tools: Mapping[str, Tool], max_calls: int = 8) -> ParsedAction:
        text = strip_think(text)
        tag_map = self._tag_map(tools)
        found: list[tuple[str, str]] = [(m.group(1), m.group(2)) for m in _TAG_PAIR.finditer(text)]
        # A last tag left open at end of sequence still counts if it is a known tag.
        last_end = 0
        for m in _TAG_PAIR.finditer(text):
            last_end = m.end()
        tail_open = _OPEN_TAG.search(text, last_end)
        if tail_open and (tail_open.group(1) in tag_map or tail_open.group(1) == self.answer_tag):
            tag, body = tail_open.group(1), text[tail_open.end():]
            body = self._unterminated_body(tag, body)
            if body is None:
                return ParsedAction(error=ActionError(
                    InvalidKind.MALFORMED_CALL, f"Malformed call: <{tag}> is not closed; end it with </{tag}>."
                ))
            found.append((tag, body))
        found = [(tag, body) for tag, body in found if tag not in self.ignore_tags]
        action_tags = {*tag_map, self.answer_tag}
        for tag, body in found:
            if tag in action_tags and (error := self._stray_close(tag, body, action_tags)):
                return ParsedAction(error=error)

        if not found:
            return ParsedAction(error=ActionError(InvalidKind.NO_ACTION, self._no_action(tag_map)))
        if found[0][0] == self.answer_tag:
            return answer_action(found[0][1], self.answer_tag)

        calls: list[ToolCall] = []
        for tag, body in found:
            if tag == self.answer_tag:
                continue
            if tag not in tag_map:
                return ParsedAction(error=ActionError(
                    InvalidKind.UNKNOWN_TOOL,
                    f"Unknown tool '{tag}'. Valid tools: {_names(tag_map)}.",
                ))
            name = tag_map[tag]
            tool = tools.get(name)
            arg = tool.primary_arg if tool is not None and tool.primary_arg else "input"
            checked = validate_call(name, {arg: strip_code_fence(body)}, tools)
            if isinstance(checked, ActionError):
                return ParsedAction(error=checked)
            calls.append(checked)
        if len(calls) > max_calls:
            return ParsedAction(error=_too_many(len(calls), max_calls))
        return ParsedAction(calls=calls)

    @staticmethod
    def _unterminated_body(tag: str, body: str) -> str | None:
        """The body of a last tag left open, or None when the model botched its closing tag.

        Generation that stops at EOS or the token limit may cut `</search>` short
        (`Gufas</sea`): that tail is dropped. Any other broken `</` (`Gufas</</</`) is refused:
        taking the text before it as the call would let a policy drift into never closing its
        calls while the tool still answers them, which reward alone cannot see.
        """
        broken = next((m for m in _CLOSE.finditer(body) if m.group(1) is None), None)
        if broken is None:
            return body
        if f"</{tag}>".startswith(body[broken.start():]):
            return body[:broken.start()]
        return None

    @staticmethod
    def _stray_close(tag: str, body: str, action_tags: set[str]) -> ActionError | None:
        """An error when a call's or an answer's body holds a closing tag that is not its own.

        `<search> Gufas</</</search>` and `<search> Gufas</answer>` would otherwise reach the
        tool as `Gufas</</` and `Gufas</answer>`, and BM25 ignores the junk: the search still
        finds the passage, so reward alone lets a policy drift into such calls. A complete
        closing tag of anything but an action (`print("</div>")` in code) is body text.
        """
        for match in _CLOSE.finditer(body):
            closed = match.group(1)
            if closed is None:
                return ActionError(InvalidKind.MALFORMED_CALL,
                                   f"Malformed call: stray '</' inside <{tag}>; end it with </{tag}>.")
            if closed in action_tags:
                return ActionError(InvalidKind.MALFORMED_CALL,
                                   f"Malformed call: <{tag}> is closed with </{closed}>; end it with </{tag}>.")
        return None

    def _no_action(self, tag_map: Mapping[str, str]) -> str:
        first = next(iter(tag_map), None)  # the env's first tool: its main one
        example = f"<{first}>...</{first}>" if first else ""
        call = f"Call a tool with {example} or a" if example else "A"
        return f"Invalid action: no tool call and no answer. {call}nswer with <{self.answer_tag}>...</{self.answer_tag}>."

    def stop_strings(self, tools: Mapping[str, Tool]) -> tuple[str, ...]:
        return tuple(f"</{tag}>" for tag in sorted(self._tag_map(tools))) + (f"</{self.answer_tag}>",)

    def instructions(self, tools: Mapping[str, Tool]) -> str:
        lines = []
        for tag, name in sorted(self._tag_map(tools).items()):
            tool = tools[name]
            lines.append(f"<{tag}>{tool.primary_arg or 'input'}</{tag}>: {tool.description}")
        lines.append(f"<{self.answer_tag}>final answer</{self.answer_tag}>: give the final answer.")
        return "\n".join(lines)

    def render_call(self, name: str, arguments: Mapping[str, Any], tools: Mapping[str, Tool]) -> str:
        tag = next(t for t, n in self._tag_map(tools).items() if n == name)
        tool = tools[name]
        return f"<{tag}>{self.body_prefix}{arguments[tool.primary_arg or 'input']}</{tag}>"

    def render_answer(self, answer: str) -> str:
        return f"<{self.answer_tag}>{self.body_prefix}{answer}</{self.answer_tag}>"

    def render_results(self, results: Sequence[str]) -> str:
        return "\n".join(f"<{self.result_tag}>\n{r}\n</{self.result_tag}>" for r in results)


# --- Hermes <tool_call>{json}</tool_call> --------------------------------------------------------


@dataclass
class HermesFormat:
    """`<tool_call>{"name": ..., "arguments": {...}}</tool_call>` calls and an answer tag."""

    answer_tag: str = "answer"
    call_tag: str = "tool_call"
    response_tag: str = "tool_response"
    template_tools: ClassVar[bool] = True  # Qwen/Hermes templates list the tools for the model

    def parse(self, text: str, tools: Mapping[str, Tool], max_calls: int = 8) -> ParsedAction:
        text = strip_think(text)
        pattern = re.compile(
            rf"<({re.escape(self.call_tag)}|{re.escape(self.answer_tag)})>(.*?)(?:</\1>|\Z)", re.DOTALL
        )
        found = [(m.group(1), m.group(2)) for m in pattern.finditer(text)]
        if not found:
            return ParsedAction(error=ActionError(
                InvalidKind.NO_ACTION,
                "Invalid action: no tool call and no answer. Call a tool with "
                f'<{self.call_tag}>{{"name": ..., "arguments": {{...}}}}</{self.call_tag}> '
                f"or answer with <{self.answer_tag}>...</{self.answer_tag}>.",
            ))
        if found[0][0] == self.answer_tag:
            return answer_action(found[0][1], self.answer_tag)

        bodies = [body for tag, body in found if tag == self.call_tag]
        if len(bodies) > max_calls:
            return ParsedAction(error=_too_many(len(bodies), max_calls))
        calls: list[ToolCall] = []
        for body in bodies:
            checked = self._parse_one(strip_code_fence(body), tools)
            if isinstance(checked, ActionError):
                return ParsedAction(error=checked)
            calls.append(checked)
        return ParsedAction(calls=calls)

    def _parse_one(self, body: str, tools: Mapping[str, Tool]) -> ToolCall | ActionError:
        try:
            obj = json.loads(body)
        except json.JSONDecodeError as exc:
            return ActionError(
                InvalidKind.INVALID_JSON,
                f"Invalid tool call JSON at line {exc.lineno} column {exc.colno}: {exc.msg}.",
            )
        arguments = obj.get("arguments", {}) if isinstance(obj, dict) else None
        if isinstance(arguments, str):  # OpenAI style: arguments as a JSON string
            try:
                arguments = json.loads(arguments) if arguments.strip() else {}
            except json.JSONDecodeError as exc:
                return ActionError(
                    InvalidKind.INVALID_JSON,
                    f"Invalid tool call arguments JSON at line {exc.lineno} column {exc.colno}: {exc.msg}.",
                )
        if not isinstance(obj, dict) or not isinstance(obj.get("name"), str) or not isinstance(arguments, dict):
            return ActionError(
                InvalidKind.MALFORMED_CALL,
                'Malformed tool call: expected {"name": "<tool>", "arguments": {...}}.',
            )
        return validate_call(obj["name"], arguments, tools)

    def stop_strings(self, tools: Mapping[str, Tool]) -> tuple[str, ...]:
        return (f"</{self.call_tag}>", f"</{self.answer_tag}>")

    def instructions(self, tools: Mapping[str, Tool]) -> str:
        specs = "\n".join(json.dumps(tools[name].openai_spec()["function"]) for name in sorted(tools))
        return (
            f"Tools:\n{specs}\nCall a tool with <{self.call_tag}>"
            f'{{"name": "<tool>", "arguments": {{...}}}}</{self.call_tag}>. '
            f"Give the final answer with <{self.answer_tag}>...</{self.answer_tag}>."
        )

    def render_call(self, name: str, arguments: Mapping[str, Any], tools: Mapping[str, Tool]) -> str:
        payload = json.dumps({"name": name, "arguments": dict(arguments)}, ensure_ascii=False)
        return f"<{self.call_tag}>{payload}</{self.call_tag}>"

    def render_answer(self, answer: str) -> str:
        return f"<{self.answer_tag}>{answer}</{self.answer_tag}>"

    def render_results(self, results: Sequence[str]) -> str:
        return "\n".join(f"<{self.response_tag}>\n{r}\n</{self.response_tag}>" for r in results)


#: What `call_format` accepts: a format name, a mapping of a name and its options (as a recipe
#: writes it), or a format object.
FormatSpec = Union[str, Mapping[str, Any], ToolCallFormat]


def get_format(spec: FormatSpec) -> ToolCallFormat:
    """A format from its name ("xml" or "hermes"), from a mapping of its name and options (as
    a recipe writes it: `{name: xml, body_prefix: " "}`), or a format object (returned as is)."""
    options: dict[str, Any] = {}
    if isinstance(spec, Mapping):
        options = dict(spec)
        spec = options.pop("name", "xml")
    if not isinstance(spec, str):
        return spec
    formats = {"xml": XmlFormat, "hermes": HermesFormat}
    if spec not in formats:
        raise ValueError(f"unknown tool-call format {spec!r}; use one of {sorted(formats)} or a ToolCallFormat object")
    fields = {f.name for f in dataclasses.fields(formats[spec])}
    unknown = sorted(set(options) - fields)
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for the {spec!r} tool-call format; "
                         f"valid options: {sorted(fields)}")
    return formats[spec](**options)

"""Every way a turn can be parsed or rejected, in both tool-call formats."""

from __future__ import annotations

import pydantic
import pytest

from agentrl.envs.parsing import HermesFormat, InvalidKind, XmlFormat, get_format
from agentrl.tools.base import Tool, ToolResult


class _Search(Tool):
    name = "search"
    description = "Search the corpus."
    primary_arg = "query"

    class Args(pydantic.BaseModel):
        model_config = pydantic.ConfigDict(extra="forbid")
        query: str = pydantic.Field(min_length=1)
        topk: int = 3

    async def call(self, args):  # pragma: no cover - parsing never calls tools
        return ToolResult(args.query)


class _Python(Tool):
    name = "python"
    description = "Run Python."
    primary_arg = "code"

    class Args(pydantic.BaseModel):
        code: str

    async def call(self, args):  # pragma: no cover
        return ToolResult(args.code)


TOOLS = {"search": _Search(), "python": _Python()}
XML = XmlFormat()
HERMES = HermesFormat()


# --- XML ---------------------------------------------------------------------------------------

def test_xml_call_and_answer():
    parsed = XML.parse("I should look. <search>capital of Oskaria</search>", TOOLS)
    assert parsed.valid and parsed.answer is None
    assert [c.to_dict() for c in parsed.calls] == [{"name": "search", "arguments": {"query": "capital of Oskaria"}}]
    assert parsed.calls[0].args.topk == 3

    assert XML.parse("<answer> Lumeva </answer>", TOOLS).answer == "Lumeva"


def test_xml_first_tag_decides_and_think_is_ignored():
    parsed = XML.parse("<think>maybe <answer>x</answer></think><search>q</search><answer>y</answer>", TOOLS)
    assert [c.name for c in parsed.calls] == ["search"] and parsed.answer is None
    assert XML.parse("<answer>y</answer><search>q</search>", TOOLS).answer == "y"


def test_xml_unterminated_last_call_and_code_fence():
    parsed = XML.parse("<python>```python\nprint(1 + 1)\n```", TOOLS)
    assert parsed.valid and parsed.calls[0].arguments == {"code": "print(1 + 1)"}


def test_xml_unterminated_call_cut_inside_its_closing_tag():
    parsed = XML.parse("<search> Gufas</sea", TOOLS)
    assert parsed.valid and parsed.calls[0].arguments == {"query": "Gufas"}
    assert XML.parse("<search> Gufas", TOOLS).calls[0].arguments == {"query": "Gufas"}
    # A complete closing tag inside code is code, not a botched close.
    parsed = XML.parse('<python>print("</div>")', TOOLS)
    assert parsed.valid and parsed.calls[0].arguments == {"code": 'print("</div>")'}


@pytest.mark.parametrize("text", ["<search> Gufas</</</", "<search> Gufas</search</", "<answer> Lumeva</</"])
def test_xml_botched_closing_tag_is_malformed(text):
    parsed = XML.parse(text, TOOLS)
    tag = "answer" if text.startswith("<answer>") else "search"
    assert parsed.error.kind is InvalidKind.MALFORMED_CALL and not parsed.calls and parsed.answer is None
    assert parsed.error.message == f"Malformed call: <{tag}> is not closed; end it with </{tag}>."


@pytest.mark.parametrize(("text", "message"), [
    # What the search demo's policy drifted into before these were refused: the junk reached
    # the search tool, BM25 ignored it, and the reward could not tell.
    ("<search> Gufas</</</</</search>", "Malformed call: stray '</' inside <search>; end it with </search>."),
    ("<search> Kunufu</answer>", "Malformed call: <search> is closed with </answer>; end it with </search>."),
    ("<answer> Bepu</search>", "Malformed call: <answer> is closed with </search>; end it with </answer>."),
    ("<answer> Bepu</</answer>", "Malformed call: stray '</' inside <answer>; end it with </answer>."),
    ("<python>x = 1</search></python>", "Malformed call: <python> is closed with </search>; end it with </python>."),
])
def test_xml_closing_tag_that_is_not_the_calls_own_is_malformed(text, message):
    parsed = XML.parse(text, TOOLS)
    assert parsed.error.kind is InvalidKind.MALFORMED_CALL and not parsed.calls and parsed.answer is None
    assert parsed.error.message == message
    # A closing tag that is not an action's stays body text, closed call or not.
    assert XML.parse('<python>print("</div>")</python>', TOOLS).calls[0].arguments == {"code": 'print("</div>")'}


def test_xml_no_action():
    parsed = XML.parse("I think the answer is 4.", TOOLS)
    assert parsed.error.kind is InvalidKind.NO_ACTION
    assert parsed.error.message == (
        "Invalid action: no tool call and no answer. Call a tool with <search>...</search> "
        "or answer with <answer>...</answer>."
    )


def test_xml_unknown_tag_lists_valid_tools():
    parsed = XML.parse("<browse>http://x</browse>", TOOLS)
    assert parsed.error.kind is InvalidKind.UNKNOWN_TOOL
    assert parsed.error.message == "Unknown tool 'browse'. Valid tools: python, search."


def test_xml_schema_violation_names_the_field():
    parsed = XML.parse("<search></search>", TOOLS)
    assert parsed.error.kind is InvalidKind.INVALID_ARGUMENTS
    assert parsed.error.message.startswith("Invalid arguments for tool 'search': query: String should have at least 1")


def test_xml_too_many_calls():
    parsed = XML.parse("<search>a</search><search>b</search><search>c</search>", TOOLS, max_calls=2)
    assert parsed.error.kind is InvalidKind.TOO_MANY_CALLS
    assert parsed.error.message == "Too many tool calls: 3 in one turn, at most 2 allowed."


def test_xml_custom_tags_and_rendering():
    fmt = XmlFormat(tags={"code": "python"}, answer_tag="final")
    parsed = fmt.parse("<code>x=1</code>", TOOLS)
    assert parsed.calls[0].name == "python"
    assert fmt.stop_strings(TOOLS) == ("</code>", "</final>")
    assert fmt.render_call("python", {"code": "x=1"}, TOOLS) == "<code>x=1</code>"
    assert fmt.parse(fmt.render_answer("7"), TOOLS).answer == "7"


# --- Hermes ------------------------------------------------------------------------------------

def test_hermes_call_round_trip():
    text = HERMES.render_call("search", {"query": "Lumeva", "topk": 2}, TOOLS)
    parsed = HERMES.parse("Let me search.\n" + text, TOOLS)
    assert parsed.valid and parsed.calls[0].arguments == {"query": "Lumeva", "topk": 2}
    assert HERMES.stop_strings(TOOLS) == ("</tool_call>", "</answer>")


def test_hermes_unterminated_call_at_eos_and_json_fence():
    parsed = HERMES.parse('<tool_call>\n```json\n{"name": "python", "arguments": {"code": "print(3)"}}\n```', TOOLS)
    assert parsed.valid and parsed.calls[0].arguments == {"code": "print(3)"}


def test_hermes_arguments_as_json_string():
    parsed = HERMES.parse('<tool_call>{"name": "search", "arguments": "{\\"query\\": \\"q\\"}"}</tool_call>', TOOLS)
    assert parsed.calls[0].arguments == {"query": "q"}


def test_hermes_invalid_json_reports_position():
    parsed = HERMES.parse('<tool_call>{"name": "search", "arguments": {"query": "q"</tool_call>', TOOLS)
    assert parsed.error.kind is InvalidKind.INVALID_JSON
    assert parsed.error.message == "Invalid tool call JSON at line 1 column 46: Expecting ',' delimiter."


def test_hermes_malformed_call():
    parsed = HERMES.parse('<tool_call>["search", "q"]</tool_call>', TOOLS)
    assert parsed.error.kind is InvalidKind.MALFORMED_CALL
    assert parsed.error.message == 'Malformed tool call: expected {"name": "<tool>", "arguments": {...}}.'


def test_hermes_unknown_tool():
    parsed = HERMES.parse('<tool_call>{"name": "calculator", "arguments": {}}</tool_call>', TOOLS)
    assert parsed.error.kind is InvalidKind.UNKNOWN_TOOL
    assert parsed.error.message == "Unknown tool 'calculator'. Valid tools: python, search."


def test_hermes_schema_violation_paths():
    missing = HERMES.parse('<tool_call>{"name": "search", "arguments": {}}</tool_call>', TOOLS)
    assert missing.error.message == "Invalid arguments for tool 'search': query: Field required."
    wrong_type = HERMES.parse(
        '<tool_call>{"name": "search", "arguments": {"query": "q", "topk": "many"}}</tool_call>', TOOLS
    )
    assert wrong_type.error.kind is InvalidKind.INVALID_ARGUMENTS
    assert wrong_type.error.message.startswith("Invalid arguments for tool 'search': topk: Input should be a valid integer")
    extra = HERMES.parse('<tool_call>{"name": "search", "arguments": {"query": "q", "k": 1}}</tool_call>', TOOLS)
    assert extra.error.message == "Invalid arguments for tool 'search': k: Extra inputs are not permitted."


def test_hermes_no_action_and_too_many():
    assert HERMES.parse("just text", TOOLS).error.kind is InvalidKind.NO_ACTION
    call = HERMES.render_call("search", {"query": "q"}, TOOLS)
    parsed = HERMES.parse(call * 3, TOOLS, max_calls=2)
    assert parsed.error.kind is InvalidKind.TOO_MANY_CALLS


def test_get_format_rejects_unknown_names():
    assert isinstance(get_format("hermes"), HermesFormat)
    with pytest.raises(ValueError, match="unknown tool-call format 'json'"):
        get_format("json")


def test_xml_body_prefix_renders_a_spaced_body_and_parses_either_form():
    spaced = get_format({"name": "xml", "body_prefix": " "})
    assert isinstance(spaced, XmlFormat) and spaced.body_prefix == " "
    call = spaced.render_call("search", {"query": "Kunufu"}, TOOLS)
    assert call == "<search> Kunufu</search>"
    assert spaced.render_answer("Sedol") == "<answer> Sedol</answer>"
    for text in (call, "<search>Kunufu</search>"):
        assert spaced.parse(text, TOOLS).calls[0].arguments == {"query": "Kunufu"}
    assert spaced.parse("<answer> Sedol</answer>", TOOLS).answer == "Sedol"


def test_get_format_names_an_unknown_option():
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['prefix'\].*valid options: .*body_prefix"):
        get_format({"name": "xml", "prefix": " "})


# --- an empty answer is a malformed answer ------------------------------------------------------

EMPTY_ANSWERS = ["<answer></answer>", "<answer>   </answer>", "<answer>\n</answer>",
                 "<think>x</think><answer> </answer>", "<answer>"]


@pytest.mark.parametrize("fmt", [XML, HERMES, get_format({"name": "xml", "body_prefix": " "})],
                         ids=["xml", "hermes", "xml-spaced"])
@pytest.mark.parametrize("text", EMPTY_ANSWERS)
def test_an_empty_answer_is_invalid(fmt, text):
    parsed = fmt.parse(text, TOOLS)
    assert not parsed.valid and parsed.answer is None and not parsed.calls
    assert parsed.error.kind is InvalidKind.EMPTY_ANSWER
    assert parsed.error.message == "Invalid action: the answer is empty. Write it inside <answer>...</answer>."


def test_an_answer_of_only_punctuation_is_still_an_answer():
    assert XML.parse("<answer>0</answer>", TOOLS).answer == "0"
    assert HERMES.parse("<answer>-</answer>", TOOLS).answer == "-"


def test_an_empty_answer_is_an_invalid_action_with_the_arpo_format_penalty():
    from agentrl.envs.tasks.search_qa import SearchQA

    env = SearchQA(reward="arpo")
    env.reset(seed=0)
    observation, reward, terminated, truncated, info = env.step("<answer></answer>")
    assert info["action_valid"] is False and not terminated and not truncated
    assert info["invalid/empty_answer"] == 1 and "answer is empty" in observation
    # The episode goes on; a right answer afterwards still gets ARPO's -1 for the bad turn.
    assert env.step(f"<answer>{env.episode.task.answer}</answer>")[1] == -1.0


def test_an_empty_answer_is_malformed_for_arithmetic_and_its_try_again_turn():
    from agentrl.envs import make_env

    env = make_env("agentrl/Arithmetic-v0")
    env.reset(seed=0)
    _, reward, _, _, info = env.step("<answer> </answer>")
    assert info["action_valid"] is False and info["answer"] is None and reward == 0.0

    env = make_env("agentrl/ArithmeticTryAgain-v0", max_turns=5)
    env.reset(seed=0)
    _, _, _, _, info = env.step("<answer></answer>")
    assert info["action_valid"] is False and info["malformed_turns"] == 1 and info["answers"] == []
    _, reward, terminated, _, _ = env.step(env.oracle_action())
    # UFO: the malformed turn costs the format penalty; the right answer is the first valid one.
    assert terminated and reward == pytest.approx(1.0 - 0.1)

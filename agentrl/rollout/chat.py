"""Chat templating in token space.

The prompt of an episode is rendered once with the tokenizer's chat template. After each turn
the engine appends the exact token ids the model sampled (loss mask 1), then the ids of the
template's *delta*: what the template writes after the assistant's content, the next
observation message and the next generation prompt (loss mask 0). Model output is never
decoded and re-encoded for training, so the trainer scores exactly the tokens that were sampled.

The delta is found with a sentinel: the conversation is rendered with the assistant's content
replaced by a marker, and everything after the marker is the closing text plus the new
observation. This works for any template that renders earlier messages the same way whatever
follows them (append-safe). `check_append` verifies this against a fresh render of the whole
conversation and raises `TemplateNotAppendSafe` when a template breaks it (some templates, for
instance, drop the reasoning of earlier assistant turns).

Rendering is pure Python (jinja) and runs for every episode and turn, so renders are memoised:
the G rollouts of a group start from the same prompt and often take the same first actions.
Encoding calls the Rust tokenizer directly where there is one (the same ids, without the
per-call overhead of the Python wrapper).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Sequence

from agentrl.types import Message

_SENTINEL = "\u2063AGENTRL_ASSISTANT_CONTENT\u2063"
_RENDER_CACHE_SIZE = 4096  # conversations; about one round of a large rollout batch


class TemplateNotAppendSafe(RuntimeError):
    """The chat template renders earlier turns differently once later turns exist."""


class ChatTemplateMissing(ValueError):
    """The tokenizer has no chat template to render conversations with."""


class ChatTemplater:
    """Renders conversations to token ids with a Hugging Face tokenizer's chat template."""

    def __init__(self, tokenizer: Any, tool_specs: Sequence[dict[str, Any]] = ()) -> None:
        if getattr(tokenizer, "chat_template", None) is None:
            raise ChatTemplateMissing(
                "the tokenizer has no chat template; set tokenizer.chat_template (agentrl's "
                "tiny model uses ChatML) or use an instruction-tuned checkpoint"
            )
        self.tokenizer = tokenizer
        self.tools = list(tool_specs) or None
        self.eos_token: str | None = tokenizer.eos_token
        self.eos_token_id: int | None = tokenizer.eos_token_id
        # The Rust tokenizer of a "fast" Hugging Face tokenizer; None for slow ones.
        self._backend = getattr(tokenizer, "backend_tokenizer", None)
        self._renders: OrderedDict[tuple, str] = OrderedDict()

    # --- whole renders ----------------------------------------------------------------------

    def render_text(self, messages: Sequence[Message], add_generation_prompt: bool) -> str:
        key = (tuple((m.role, m.content) for m in messages), add_generation_prompt)
        text = self._renders.get(key)
        if text is None:
            text = self.tokenizer.apply_chat_template(
                [m.to_dict() for m in messages],
                tools=self.tools,
                add_generation_prompt=add_generation_prompt,
                tokenize=False,
            )
            self._renders[key] = text
            if len(self._renders) > _RENDER_CACHE_SIZE:
                self._renders.popitem(last=False)
        return text

    def encode(self, text: str) -> list[int]:
        if self._backend is not None:
            return self._backend.encode(text, add_special_tokens=False).ids
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def render_ids(self, messages: Sequence[Message], add_generation_prompt: bool) -> list[int]:
        return self.encode(self.render_text(messages, add_generation_prompt))

    def prompt_ids(self, messages: Sequence[Message]) -> list[int]:
        """The first prompt of an episode: system + first observation + generation prompt."""
        return self.render_ids(messages, add_generation_prompt=True)

    # --- incremental pieces -----------------------------------------------------------------

    def delta_ids(
        self,
        history: Sequence[Message],
        action_ended_with_eos: bool,
        observation: Message | None,
    ) -> list[int]:
        """Ids to append after the sampled ids of the last assistant message of `history`.

        That is the template's closing of the assistant turn (minus the EOS token when the
        model sampled it itself), then `observation` and the next generation prompt if there is
        an observation.
        """
        marked = [*history[:-1], Message("assistant", _SENTINEL)]
        if observation is None:
            full = self.render_text(marked, add_generation_prompt=False)
        else:
            full = self.render_text([*marked, observation], add_generation_prompt=True)
        position = full.rfind(_SENTINEL)
        if position < 0:
            raise TemplateNotAppendSafe(
                "the chat template does not render assistant content verbatim; use a template "
                "that writes each assistant message's content unchanged"
            )
        closing = full[position + len(_SENTINEL):]
        if action_ended_with_eos and self.eos_token and closing.startswith(self.eos_token):
            closing = closing[len(self.eos_token):]
        return self.encode(closing)

    def check_append(
        self, token_ids: Sequence[int], messages: Sequence[Message], add_generation_prompt: bool,
        *, exact_ids: bool = False,
    ) -> None:
        """Fail loudly unless `token_ids` is a fresh render of `messages`.

        By default the comparison is on text, because a sampled token sequence may be a
        non-canonical tokenization of its own text (still correct to train on). With
        `exact_ids=True` (scripted actions, tests) the ids themselves must match.
        """
        expected_text = self.render_text(messages, add_generation_prompt)
        got_text = self.tokenizer.decode(list(token_ids), skip_special_tokens=False)
        if got_text != expected_text:
            at = _first_difference(got_text, expected_text)
            window = slice(max(0, at - 20), at + 40)  # one line around the first difference
            raise TemplateNotAppendSafe(
                "the chat template is not append-safe: the conversation built turn by turn differs "
                f"from a fresh render of all its messages at character {at} "
                f"(built: {got_text[window]!r}, rendered: {expected_text[window]!r}); use a template "
                "that renders earlier messages the same whatever follows them, or set "
                "rollout.check_template=false to train on the conversation as built"
            )
        if exact_ids:
            expected_ids = self.encode(expected_text)
            if list(token_ids) != expected_ids:
                raise TemplateNotAppendSafe(
                    f"token ids differ from a fresh render at index "
                    f"{_first_difference(list(token_ids), expected_ids)}"
                )


def _first_difference(a: Sequence[Any], b: Sequence[Any]) -> int:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return min(len(a), len(b))

"""Conversation templates: how (user, assistant) turns become one prompt string.

The three templates READ can select (``data.conv_type``), with the reference's exact strings (LLaVA
``conversation.py``: ``conv_llava_v1``, ``conv_vicuna_v1``, ``conv_llava_llama_2``):

* ``llava_v1`` (training default): ``"<system> USER: <q> ASSISTANT: <a></s>USER: <q2> ASSISTANT: <a2></s>"``.
* ``vicuna_v1``: the same layout with the "curious user" system prompt. The reference's test and demo scripts use it
  without choosing it (a module default); it is needed for parity with the published FP-RefCOCO numbers.
* ``llava_llama_2``:
  ``"[INST] <<SYS>>\\n<system>\\n<</SYS>>\\n\\n<q> [/INST] <a> </s><s>[INST] <q2> [/INST] <a2> </s>"``.

A prompt that ends with an assistant turn of ``None`` (or "") is a generation prompt: it ends in ``"ASSISTANT:"`` or
``"[/INST]"``. ``<image>`` in a user message is expanded to ``<im_start><image><im_end>`` (READ always uses image
start/end tokens).

``render`` also returns the character spans that carry the language-model loss: for every answered assistant turn,
the text after the role marker (the space, the answer and the closing ``</s>``). A token that overlaps such a span is
supervised. This reproduces the reference's round-splitting label mask, including its handling of the space before
the answer (``read.data.text``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from types import MappingProxyType

from read.constants import IM_END_TOKEN, IM_START_TOKEN, IMAGE_TOKEN

__all__ = [
    "CONV_TEMPLATES",
    "ConversationTemplate",
    "Message",
    "RenderedConversation",
    "SeparatorStyle",
    "get_template",
]

Message = tuple[str, "str | None"]

# Strings a message may not contain: they would be read as sequence boundaries by the tokenizer.
_RESERVED = ("<s>", "</s>", IM_START_TOKEN, IM_END_TOKEN)
_USER_ALIASES = ("user", "assistant")


class SeparatorStyle(str, Enum):
    """How turns are joined."""

    TWO = "two"  # "<system><sep><ROLE>: <msg><sep or sep2>..." (LLaVA SeparatorStyle.TWO)
    LLAMA_2 = "llama_2"  # "[INST] ... [/INST] <answer> <sep2><sep>[INST] ..." (LLaVA SeparatorStyle.LLAMA_2)


@dataclass(frozen=True)
class RenderedConversation:
    """A prompt and the parts of it that are learned.

    Attributes:
        text: the prompt string.
        supervised_spans: ``(start, end)`` character spans of ``text`` whose tokens carry the LM loss, in order.
    """

    text: str
    supervised_spans: tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class ConversationTemplate:
    """A conversation format.

    Attributes:
        name: registry name.
        system: system prompt.
        roles: (user role, assistant role) as written in the prompt.
        sep_style: joining scheme.
        sep: separator after the system prompt and user turns (TWO), or before each new user turn (LLAMA_2).
        sep2: separator closing each assistant turn (the EOS string).
    """

    name: str
    system: str
    roles: tuple[str, str]
    sep_style: SeparatorStyle
    sep: str
    sep2: str

    def get_prompt(self, messages: Sequence[Message]) -> str:
        """The prompt string for alternating (role, text) turns; see ``render``."""
        return self.render(messages).text

    def render(self, messages: Sequence[Message]) -> RenderedConversation:
        """Build the prompt and its supervised character spans.

        Arguments:
            messages: ``(role, text)`` pairs alternating user, assistant, user, ...; a role is the template's role
                string ("USER"/"ASSISTANT") or "user"/"assistant". Only the last message may be an assistant turn
                with text None or "" (a generation prompt).

        Returns:
            The prompt and the spans of the answered assistant turns.
        """
        turns = self._check(messages)
        if self.sep_style is SeparatorStyle.TWO:
            return self._render_two(turns)
        return self._render_llama_2(turns)

    def _check(self, messages: Sequence[Message]) -> list[str | None]:
        """Validate roles and texts; returns the texts with ``<image>`` expanded in user turns."""
        if not messages:
            raise ValueError(f"{self.name}: a conversation needs at least one user message")
        texts: list[str | None] = []
        for i, message in enumerate(messages):
            if not (isinstance(message, (tuple, list)) and len(message) == 2):
                raise ValueError(f"{self.name}: message {i} must be a (role, text) pair, got {message!r}")
            role, text = message
            is_user = i % 2 == 0
            if role not in (self.roles[i % 2], _USER_ALIASES[i % 2]):
                raise ValueError(
                    f"{self.name}: message {i} has role {role!r}, expected {self.roles[i % 2]!r} (turns must "
                    f"alternate, starting with the user)"
                )
            if text is None or text == "":
                if is_user or i != len(messages) - 1:
                    raise ValueError(f"{self.name}: message {i} ({role}) is empty; only the last answer may be")
                texts.append(None)
                continue
            if not isinstance(text, str):
                raise ValueError(f"{self.name}: message {i} text must be a string, got {type(text).__name__}")
            for reserved in _RESERVED:
                if reserved in text:
                    raise ValueError(f"{self.name}: message {i} contains the reserved string {reserved!r}: {text!r}")
            if is_user:
                text = text.replace(IMAGE_TOKEN, IM_START_TOKEN + IMAGE_TOKEN + IM_END_TOKEN)
            elif IMAGE_TOKEN in text:
                raise ValueError(f"{self.name}: answer {i} contains {IMAGE_TOKEN!r}: {text!r}")
            texts.append(text)
        return texts

    def _render_two(self, turns: list[str | None]) -> RenderedConversation:
        text = self.system + self.sep
        spans = []
        for i, turn in enumerate(turns):
            role = self.roles[i % 2]
            if turn is None:
                text += role + ":"
            elif i % 2 == 0:
                text += f"{role}: {turn}{self.sep}"
            else:
                start = len(text) + len(role) + 1  # the space after "ASSISTANT:"
                text += f"{role}: {turn}{self.sep2}"
                spans.append((start, len(text)))
        return RenderedConversation(text, tuple(spans))

    def _render_llama_2(self, turns: list[str | None]) -> RenderedConversation:
        text = ""
        spans = []
        for i, turn in enumerate(turns):
            if turn is None:
                continue
            if i % 2 == 0:
                if i == 0:
                    turn = f"<<SYS>>\n{self.system}\n<</SYS>>\n\n{turn}"
                # The first turn has no leading separator (the reference strips it).
                text += ("" if i == 0 else self.sep) + f"[INST] {turn} [/INST]"
            else:
                start = len(text)  # the space after "[/INST]"
                text += f" {turn} {self.sep2}"
                spans.append((start, len(text)))
        return RenderedConversation(text, tuple(spans))


_LLAVA_V1 = ConversationTemplate(
    name="llava_v1",
    system="A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions.",
    roles=("USER", "ASSISTANT"),
    sep_style=SeparatorStyle.TWO,
    sep=" ",
    sep2="</s>",
)
_VICUNA_V1 = ConversationTemplate(
    name="vicuna_v1",
    system="A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions.",
    roles=("USER", "ASSISTANT"),
    sep_style=SeparatorStyle.TWO,
    sep=" ",
    sep2="</s>",
)
_LLAVA_LLAMA_2 = ConversationTemplate(
    name="llava_llama_2",
    system="You are a helpful language and vision assistant. "
    "You are able to understand the visual content that the user provides, "
    "and assist the user with a variety of tasks using natural language.",
    roles=("USER", "ASSISTANT"),
    sep_style=SeparatorStyle.LLAMA_2,
    sep="<s>",
    sep2="</s>",
)

CONV_TEMPLATES = MappingProxyType({t.name: t for t in (_LLAVA_V1, _VICUNA_V1, _LLAVA_LLAMA_2)})


def get_template(name: str) -> ConversationTemplate:
    """The registered template called ``name``; raises ValueError naming the known templates."""
    try:
        return CONV_TEMPLATES[name]
    except KeyError:
        raise ValueError(f"unknown conversation template {name!r}; known: {sorted(CONV_TEMPLATES)}") from None

"""Conversations -> prompt ids and stop rules, shared by `scratchlm chat` and the server's chat endpoint.

The markup comes from the checkpoint's chat template (`config.json["chat_template"]`, written by finetuning);
a base model without one gets the plain `User: ... / Assistant: ...` fallback and stops at "\\nUser:".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from scratchlm.tokenizer.chat import ChatTemplate


@dataclass
class ChatPrompt:
    ids: list[int]
    stop_ids: list[int]
    stop_strings: list[str]


def chat_prompt(template: ChatTemplate, tokenizer: Any, messages: Sequence[Mapping[str, str]]) -> ChatPrompt:
    """The ids that ask the model for the next assistant turn, and what ends that turn."""
    ids, _ = template.encode_messages(tokenizer, messages, add_generation_prompt=True)
    return ChatPrompt(ids, template.stop_ids(tokenizer), list(template.stop_strings))


def fit_history(
    template: ChatTemplate, tokenizer: Any, messages: list[dict[str, str]], max_prompt_tokens: int
) -> tuple[list[dict[str, str]], int]:
    """Drop the oldest turns (a leading system message stays) until the prompt fits in `max_prompt_tokens`.

    Returns the kept messages and how many were dropped. The newest message is always kept; if it alone is too
    long the caller's length check reports it.
    """
    system = messages[:1] if messages and messages[0]["role"] == "system" else []
    rest = messages[len(system) :]
    dropped = 0
    while len(rest) > 1 and len(chat_prompt(template, tokenizer, system + rest).ids) > max_prompt_tokens:
        # drop a whole exchange (user + assistant) when possible, so the history never starts mid-turn
        n = 2 if len(rest) > 2 and rest[0]["role"] == "user" and rest[1]["role"] == "assistant" else 1
        rest = rest[n:]
        dropped += n
    return system + rest, dropped

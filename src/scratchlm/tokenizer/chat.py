"""Chat templates: a list of `{"role", "content"}` messages -> token ids and a loss mask.

One template object serves training (SFT and DPO build their examples with `encode_messages`) and inference
(`generate`, `chat` and `serve` build prompts with `add_generation_prompt=True` and stop on `stop_ids`), so the
model always sees at inference exactly the markup it was trained on.

Decisions:
- A template is plain data (prefix/suffix strings per role), stored in a checkpoint's `config.json` under
  `chat_template` and read back with `ChatTemplate.from_config`. No Jinja, no code in checkpoints.
- Markup and message content are encoded SEPARATELY and concatenated. Content goes through `encode_ordinary`, so
  a user typing "<|im_end|>" gets ordinary text, never the control token. It also makes the prompt ids an exact
  prefix of the training ids (BPE merges never cross a markup boundary), so a generation prompt continues the
  way training sequences did.
- Loss mask: 1 on assistant content and the assistant suffix (the end marker, so the model learns to stop),
  0 on everything else (system/user turns and the assistant prefix).
- Base models without a template get the plain-text fallback `User: ...\\nAssistant: ...` (no special tokens).

Pure Python: never imports torch (the layering test checks it).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import regex

from scratchlm.errors import ScratchlmError

ROLES = ("system", "user", "assistant")

ALPACA_PREAMBLE = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request."
)


class _Tokenizer(Protocol):
    """The part of the tokenizer contract a template needs (BPETokenizer and CharTokenizer both have it)."""

    special_tokens: dict[str, int]
    eot_id: int | None

    def encode_ordinary(self, text: str) -> list[int]: ...

    def add_special_tokens(self, tokens: list[str]) -> list[int]: ...


@dataclass
class ChatTemplate:
    """Prefix/suffix markup per role; see the module docstring. Field names are the `chat_template` JSON keys."""

    name: str = "plain"
    """chatml, alpaca, plain, or your own name for a custom template."""
    bos: str = ""
    """Text placed once before the first message."""
    system_prefix: str = "System: "
    system_suffix: str = "\n"
    user_prefix: str = "User: "
    user_suffix: str = "\n"
    assistant_prefix: str = "Assistant: "
    assistant_suffix: str = "\n"
    default_system: str = ""
    """System message used when the conversation has none (Alpaca's preamble); empty: no system turn."""
    input_prefix: str = "\n\n"
    """Joins an Alpaca record's instruction and input into one user message."""
    special_tokens: list[str] = field(default_factory=list)
    """Control tokens the markup uses; `add_special_tokens` adds the missing ones to the tokenizer."""
    stop: list[str] = field(default_factory=list)
    """Special tokens that end an assistant turn (generation stops on them)."""
    stop_strings: list[str] = field(default_factory=list)
    """Text that ends an assistant turn when no control token does (the plain fallback's "\\nUser:")."""

    def __post_init__(self) -> None:
        for tok in self.stop:
            if tok not in self.special_tokens:
                raise ScratchlmError(
                    f"chat template {self.name!r}: stop token {tok!r} is not among its special_tokens "
                    f"{self.special_tokens}; list it there"
                )

    # -- construction -------------------------------------------------------------------------------------------

    @classmethod
    def named(cls, name: str) -> ChatTemplate:
        """A built-in template: `chatml` (adds <|im_start|>/<|im_end|>), `alpaca`, or `plain`."""
        if name not in BUILTIN:
            raise ScratchlmError(f"unknown chat template {name!r}; choose one of {', '.join(BUILTIN)}")
        return dataclasses.replace(BUILTIN[name])

    @classmethod
    def from_config(cls, section: Mapping[str, Any] | None) -> ChatTemplate:
        """The template stored in a checkpoint (`config.json["chat_template"]`), or the plain fallback if None."""
        if section is None:
            return cls.named("plain")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(section) - known)
        if unknown:
            raise ScratchlmError(
                f"chat_template section has unknown key(s) {', '.join(unknown)}; known keys: {', '.join(sorted(known))}"
            )
        data = {k: list(v) if isinstance(v, (list, tuple)) else v for k, v in section.items()}
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    # -- tokenizer side -----------------------------------------------------------------------------------------

    def add_special_tokens(self, tokenizer: _Tokenizer) -> list[int]:
        """Add the template's control tokens the tokenizer lacks; returns the new ids (resize embeddings to fit)."""
        missing = [t for t in self.special_tokens if t not in tokenizer.special_tokens]
        return tokenizer.add_special_tokens(missing) if missing else []

    def stop_ids(self, tokenizer: _Tokenizer) -> list[int]:
        """Token ids that end an assistant turn: the template's stop tokens plus `<|endoftext|>` when present."""
        ids = [self._special_id(tokenizer, t) for t in self.stop]
        if tokenizer.eot_id is not None and tokenizer.eot_id not in ids:
            ids.append(tokenizer.eot_id)
        return ids

    def _special_id(self, tokenizer: _Tokenizer, token: str) -> int:
        try:
            return tokenizer.special_tokens[token]
        except KeyError:
            raise ScratchlmError(
                f"the tokenizer lacks the chat template's special token {token!r}; add it with "
                "ChatTemplate.add_special_tokens(tokenizer) (finetune sft does) and resize the embeddings"
            ) from None

    def _encode_markup(self, tokenizer: _Tokenizer, text: str) -> list[int]:
        """Markup may contain the template's control tokens: map those to their ids, encode the rest as text."""
        if not text:
            return []
        if not self.special_tokens:
            return tokenizer.encode_ordinary(text)
        pattern = "(" + "|".join(regex.escape(t) for t in sorted(self.special_tokens, key=len, reverse=True)) + ")"
        ids: list[int] = []
        for i, part in enumerate(regex.split(pattern, text)):
            if i % 2:  # odd parts are the captured control tokens
                ids.append(self._special_id(tokenizer, part))
            elif part:
                ids.extend(tokenizer.encode_ordinary(part))
        return ids

    # -- messages -> ids ----------------------------------------------------------------------------------------

    def encode_messages(
        self,
        tokenizer: _Tokenizer,
        messages: Sequence[Mapping[str, str]],
        add_generation_prompt: bool = False,
    ) -> tuple[list[int], list[int]]:
        """Token ids of a conversation and a same-length 0/1 loss mask (1 = assistant content + end marker).

        With `add_generation_prompt`, the ids end with the assistant prefix, ready for the model to answer.
        """
        messages = validate_messages(messages)
        if self.default_system and messages[0]["role"] != "system":
            messages = [{"role": "system", "content": self.default_system}, *messages]
        ids: list[int] = []
        mask: list[int] = []

        def put(piece: list[int], trained: int) -> None:
            ids.extend(piece)
            mask.extend([trained] * len(piece))

        put(self._encode_markup(tokenizer, self.bos), 0)
        for m in messages:
            role, content = m["role"], m["content"]
            prefix, suffix = getattr(self, f"{role}_prefix"), getattr(self, f"{role}_suffix")
            trained = int(role == "assistant")
            put(self._encode_markup(tokenizer, prefix), 0)
            put(tokenizer.encode_ordinary(content), trained)
            put(self._encode_markup(tokenizer, suffix), trained)
        if add_generation_prompt:
            put(self._encode_markup(tokenizer, self.assistant_prefix), 0)
        return ids, mask

    def render(self, messages: Sequence[Mapping[str, str]], add_generation_prompt: bool = False) -> str:
        """The conversation as text (for display and debugging; training uses `encode_messages`)."""
        messages = validate_messages(messages)
        if self.default_system and messages[0]["role"] != "system":
            messages = [{"role": "system", "content": self.default_system}, *messages]
        parts = [self.bos]
        for m in messages:
            parts += [getattr(self, f"{m['role']}_prefix"), m["content"], getattr(self, f"{m['role']}_suffix")]
        if add_generation_prompt:
            parts.append(self.assistant_prefix)
        return "".join(parts)

    def alpaca_messages(self, record: Mapping[str, Any], with_output: bool = True) -> list[dict[str, str]]:
        """An Alpaca record (instruction, optional input, output) as user/assistant messages for this template."""
        user = str(record["instruction"])
        if record.get("input"):
            user += self.input_prefix + str(record["input"])
        messages = [{"role": "user", "content": user}]
        if with_output:
            messages.append({"role": "assistant", "content": str(record["output"])})
        return messages


def validate_messages(messages: Sequence[Mapping[str, str]]) -> list[dict[str, str]]:
    """Check roles and contents; one-line errors for the user's data file."""
    if not messages:
        raise ScratchlmError("a conversation has no messages; give at least one {'role', 'content'} message")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping) or "role" not in m or "content" not in m:
            raise ScratchlmError(f"message {i} must be an object with 'role' and 'content', got {m!r:.80}")
        if m["role"] not in ROLES:
            raise ScratchlmError(f"message {i} has role {m['role']!r}; use one of {', '.join(ROLES)}")
        if not isinstance(m["content"], str):
            raise ScratchlmError(f"message {i} content must be a string, got {type(m['content']).__name__}")
        out.append({"role": m["role"], "content": m["content"]})
    return out


BUILTIN: dict[str, ChatTemplate] = {
    "plain": ChatTemplate(name="plain", stop_strings=["\nUser:"]),
    "chatml": ChatTemplate(
        name="chatml",
        system_prefix="<|im_start|>system\n",
        system_suffix="<|im_end|>\n",
        user_prefix="<|im_start|>user\n",
        user_suffix="<|im_end|>\n",
        assistant_prefix="<|im_start|>assistant\n",
        assistant_suffix="<|im_end|>\n",
        special_tokens=["<|im_start|>", "<|im_end|>"],
        stop=["<|im_end|>"],
    ),
    # The Stanford Alpaca prompt (as in LLMs-from-scratch ch. 7), ended by <|endoftext|> so generation stops.
    "alpaca": ChatTemplate(
        name="alpaca",
        system_prefix="",
        system_suffix="\n\n",
        user_prefix="### Instruction:\n",
        user_suffix="\n\n",
        assistant_prefix="### Response:\n",
        assistant_suffix="<|endoftext|>",
        default_system=ALPACA_PREAMBLE,
        input_prefix="\n\n### Input:\n",
        special_tokens=["<|endoftext|>"],
        stop=["<|endoftext|>"],
    ),
}


def chat_template_jinja(template: ChatTemplate) -> str:
    """The template as Jinja, the form GGUF files (`tokenizer.chat_template`) and servers' `/tokenizer_info`
    carry: it renders exactly the text `template.render` gives (llama.cpp, LM Studio, lm-evaluation-harness)."""

    def lit(text: str) -> str:  # a Jinja string literal (JSON's escapes are Jinja's)
        return json.dumps(text, ensure_ascii=False)

    def emit(expr: str) -> str:
        return "{{ " + expr + " }}"

    turns = []
    for k, role in enumerate(("system", "user", "assistant")):
        prefix, suffix = getattr(template, f"{role}_prefix"), getattr(template, f"{role}_suffix")
        keyword = "if" if k == 0 else "elif"
        turns.append(f"{{% {keyword} message['role'] == {lit(role)} %}}")
        turns.append(emit(f"{lit(prefix)} + message['content'] + {lit(suffix)}"))
    parts = [emit(lit(template.bos))]
    if template.default_system:
        system = template.system_prefix + template.default_system + template.system_suffix
        parts += ["{% if messages[0]['role'] != 'system' %}", emit(lit(system)), "{% endif %}"]
    parts += ["{% for message in messages %}", *turns, "{% endif %}{% endfor %}"]
    parts += ["{% if add_generation_prompt %}", emit(lit(template.assistant_prefix)), "{% endif %}"]
    return "".join(parts)

"""Chat templates: markup, loss mask, generation prompt as an exact prefix, stop ids, config round trip."""

from __future__ import annotations

import pytest

from scratchlm.errors import ScratchlmError
from scratchlm.tokenizer.chat import ChatTemplate


class ByteTokenizer:
    """Bytes are ids 0..255; special tokens are appended after them (the tokenizer contract's rule)."""

    def __init__(self) -> None:
        self.special_tokens: dict[str, int] = {"<|endoftext|>": 256}
        self.eot_id: int | None = 256

    @property
    def vocab_size(self) -> int:
        return 256 + len(self.special_tokens)

    def encode_ordinary(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def add_special_tokens(self, tokens: list[str]) -> list[int]:
        ids = []
        for t in tokens:
            self.special_tokens[t] = self.vocab_size
            ids.append(self.special_tokens[t])
        return ids

    def decode(self, ids: list[int]) -> str:
        inv = {v: k for k, v in self.special_tokens.items()}
        out, buf = [], bytearray()
        for i in ids:
            if i in inv:
                out.append(buf.decode("utf-8", "replace") + inv[i])
                buf = bytearray()
            else:
                buf.append(i)
        return "".join(out) + buf.decode("utf-8", "replace")


CONV = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi <|im_end|>"},
    {"role": "assistant", "content": "Hello."},
]


def _trained_text(tok: ByteTokenizer, ids: list[int], mask: list[int]) -> str:
    return tok.decode([i for i, m in zip(ids, mask) if m])


def test_chatml_markup_mask_and_injection_safety() -> None:
    tok = ByteTokenizer()
    t = ChatTemplate.named("chatml")
    new = t.add_special_tokens(tok)
    assert new == [257, 258]
    ids, mask = t.encode_messages(tok, CONV)
    assert len(ids) == len(mask)
    assert tok.decode(ids) == t.render(CONV)
    assert t.render(CONV) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi <|im_end|><|im_end|>\n"
        "<|im_start|>assistant\nHello.<|im_end|>\n"
    )
    # three control <|im_end|> ids (one per turn): the user's literal "<|im_end|>" stays ordinary bytes
    assert ids.count(258) == 3 and ids.count(257) == 3
    # only the assistant's content and end marker are trained
    assert _trained_text(tok, ids, mask) == "Hello.<|im_end|>\n"
    assert t.stop_ids(tok) == [258, 256]


def test_generation_prompt_is_exact_prefix_of_training_ids() -> None:
    tok = ByteTokenizer()
    t = ChatTemplate.named("chatml")
    t.add_special_tokens(tok)
    full, mask = t.encode_messages(tok, CONV)
    prompt, pmask = t.encode_messages(tok, CONV[:2], add_generation_prompt=True)
    assert full[: len(prompt)] == prompt and not any(pmask)
    assert mask[: len(prompt)] == [0] * len(prompt) and all(mask[len(prompt) :])


def test_alpaca_format_matches_reference_prompt() -> None:
    tok = ByteTokenizer()
    t = ChatTemplate.named("alpaca")
    assert t.add_special_tokens(tok) == []  # <|endoftext|> already there
    rec = {"instruction": "Edit the sentence.", "input": "He go home.", "output": "He goes home."}
    text = t.render(t.alpaca_messages(rec))
    assert text == (
        "Below is an instruction that describes a task. Write a response that appropriately completes the request."
        "\n\n### Instruction:\nEdit the sentence.\n\n### Input:\nHe go home.\n\n### Response:\nHe goes home."
        "<|endoftext|>"
    )
    ids, mask = t.encode_messages(tok, t.alpaca_messages(rec))
    assert _trained_text(tok, ids, mask) == "He goes home.<|endoftext|>"
    no_input = t.render(t.alpaca_messages({"instruction": "Say hi.", "output": "hi"}, with_output=False), True)
    assert no_input.endswith("### Instruction:\nSay hi.\n\n### Response:\n")


def test_plain_fallback_and_config_round_trip() -> None:
    tok = ByteTokenizer()
    plain = ChatTemplate.from_config(None)
    assert plain.render(CONV[1:2], add_generation_prompt=True) == "User: Hi <|im_end|>\nAssistant: "
    assert plain.stop_ids(tok) == [256] and plain.stop_strings == ["\nUser:"]
    t = ChatTemplate.named("chatml")
    assert ChatTemplate.from_config(t.to_dict()) == t
    with pytest.raises(ScratchlmError, match="unknown key"):
        ChatTemplate.from_config({"nme": "x"})


def test_missing_special_token_and_bad_messages_are_one_line_errors() -> None:
    tok = ByteTokenizer()
    t = ChatTemplate.named("chatml")
    with pytest.raises(ScratchlmError, match="lacks the chat template's special token"):
        t.encode_messages(tok, CONV)
    with pytest.raises(ScratchlmError, match="role"):
        t.encode_messages(tok, [{"role": "bot", "content": "x"}])
    with pytest.raises(ScratchlmError, match="no messages"):
        t.encode_messages(tok, [])

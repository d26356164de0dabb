"""A verifiable task that learns on a CPU: addition and subtraction of small numbers, in words or symbols.

    User: what is 47 plus 8?            User: 41 - 8 = ?            User: subtract 18 from 37
    Assistant: 55                       Assistant: thirty-three     Assistant: 19

`write_task` writes everything the arithmetic recipes need into one folder:

    pretrain/        char-level token shards of the problems with their answers (digits or, a `words_fraction`
                     of them, words), in the chat markup (`scratchlm pretrain --preset arith`)
    sft.jsonl        chat records {"messages": [...]} for the SFT warm start (`finetune sft --preset arith-sft`),
                     answers in digits or words as in pretrain/
    prompts.jsonl    {"prompt", "answer"} for GRPO (`finetune grpo --preset arith-grpo --verifier math`)
    test.jsonl       held-out {"prompt", "answer"}: no (a, op, b) of it appears in the other files

The reference answer is the number alone in digits, so the `math` verifier (last number) and `exact` agree on
it; demonstrations in words score 0 with either. Carries and borrows make the sums hard for a small
left-to-right model, and half the demonstrations answer in words: SFT leaves pass@1 middling, with room for RL.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scratchlm.errors import ScratchlmError
from scratchlm.fs import atomic_write_text

PLUS = ("what is {a} plus {b}?", "{a} + {b} = ?", "add {a} and {b}")
MINUS = ("what is {a} minus {b}?", "{a} - {b} = ?", "subtract {b} from {a}")


@dataclass
class ArithmeticConfig:
    """Write the arithmetic task (pretraining shards, SFT chats, GRPO prompts, held-out test) into --out."""

    out: Path = Path("data/arith")
    """Folder to write the task into (new or empty)."""
    max_operand: int = 30
    """Operands are drawn uniformly from 0 .. max_operand - 1 (answers then stay below 2 * max_operand)."""
    n_pretrain: int = 40000
    """Problems with answers in the pretraining text."""
    n_sft: int = 20000
    """Chat examples for the SFT warm start."""
    n_prompts: int = 4000
    """Prompts for GRPO."""
    n_test: int = 100
    """Held-out problems for evaluation."""
    words_fraction: float = 0.5
    """Share of the SFT answers spelled in words ("one hundred five"), as people answer too. The `math` verifier
    reads digits only, so GRPO has to learn the answer format the reward asks for, besides the sums."""
    seed: int = 0
    """Seed of the problem generator."""

    def __post_init__(self) -> None:
        if not 10 <= self.max_operand <= 100_000:
            raise ScratchlmError(f"--max-operand must be between 10 and 100000, got {self.max_operand}")
        if not 0 <= self.words_fraction <= 1:
            raise ScratchlmError(f"--words-fraction must lie in [0, 1], got {self.words_fraction}")


def make_problem(rng: random.Random, max_operand: int = 50) -> tuple[int, str, int]:
    """(a, op, b), operands uniform in [0, max_operand), a >= b for subtraction (answers are never negative).

    Uniform operands, not uniform lengths: the held-out set then takes a few percent of every kind of problem,
    rather than most of the hundred-odd one-digit ones.
    """
    a, b, op = rng.randrange(max_operand), rng.randrange(max_operand), rng.choice("+-")
    if op == "-" and a < b:
        a, b = b, a
    return a, op, b


def render(problem: tuple[int, str, int], rng: random.Random) -> dict[str, str]:
    """{"prompt", "answer"} for a problem, in one of its phrasings."""
    a, op, b = problem
    phrasing = rng.choice(PLUS if op == "+" else MINUS)
    return {"prompt": phrasing.format(a=a, b=b), "answer": str(a + b if op == "+" else a - b)}


ONES = "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen " \
       "seventeen eighteen nineteen".split()
TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()


def in_words(n: int) -> str:
    """0 <= n < 1,000,000 in English words: 105 -> "one hundred five", 47 -> "forty-seven"."""
    if n < 20:
        return ONES[n]
    if n < 100:
        return TENS[n // 10] + ("-" + ONES[n % 10] if n % 10 else "")
    if n < 1000:
        return ONES[n // 100] + " hundred" + (" " + in_words(n % 100) if n % 100 else "")
    return in_words(n // 1000) + " thousand" + (" " + in_words(n % 1000) if n % 1000 else "")


def chat_text(record: dict[str, str]) -> str:
    """The record in the plain chat markup, as the pretraining text and the SFT template spell it."""
    return f"User: {record['prompt']}\nAssistant: {record['answer']}\n"


def write_task(cfg: ArithmeticConfig) -> dict[str, Any]:
    """Write the task folder (see the module docstring); returns the counts written."""
    from scratchlm.data.prepare import prepare_text

    rng = random.Random(cfg.seed)
    space = cfg.max_operand**2 + cfg.max_operand * (cfg.max_operand + 1) // 2  # a + b, and a - b with a >= b
    if cfg.n_test * 10 > space:
        raise ScratchlmError(
            f"--n-test {cfg.n_test} would hold out over a tenth of the {space} problems with operands below "
            f"{cfg.max_operand}; lower it or raise --max-operand")
    test: dict[tuple[int, str, int], None] = {}
    while len(test) < cfg.n_test:
        test[make_problem(rng, cfg.max_operand)] = None

    def draw(n: int) -> list[dict[str, str]]:
        out = []
        while len(out) < n:
            p = make_problem(rng, cfg.max_operand)
            if p not in test:
                out.append(render(p, rng))
        return out

    pretrain, sft, prompts = draw(cfg.n_pretrain), draw(cfg.n_sft), draw(cfg.n_prompts)
    tests = [render(p, rng) for p in test]
    def answer(r: dict[str, str]) -> str:
        return in_words(int(r["answer"])) if rng.random() < cfg.words_fraction else r["answer"]

    cfg.out.mkdir(parents=True, exist_ok=True)
    text = "".join(chat_text({**r, "answer": answer(r)}) for r in pretrain)
    prepare_text(text, cfg.out / "pretrain", tokenizer="char", val_fraction=0.05)
    chats = [{"messages": [{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": answer(r)}]}
             for r in sft]
    for name, rows in (("sft.jsonl", chats), ("prompts.jsonl", prompts), ("test.jsonl", tests)):
        atomic_write_text(cfg.out / name, "".join(json.dumps(r) + "\n" for r in rows), name)
    return {"pretrain": len(pretrain), "sft": len(sft), "prompts": len(prompts), "test": len(tests)}

"""Finetuning data: loss masking, packing boundaries, resumable batch streams, file formats, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from scratchlm import tokenizer as tokenizers
from scratchlm.data.finetune import (
    IGNORE,
    EpochBatches,
    collate_classification,
    collate_preferences,
    collate_sft,
    load_classification,
    load_instructions,
    load_preferences,
    pack_examples,
)
from scratchlm.errors import ScratchlmError
from scratchlm.tokenizer.chat import ChatTemplate

RECORDS = [
    {"instruction": "Name a color.", "input": "", "output": "Blue."},
    {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"},
]


@pytest.fixture
def gpt2() -> tokenizers.Tokenizer:
    return tokenizers.load("gpt2")  # from the mirror (conftest); the parsed files are cached between tests


def _write(path: Path, records: list[dict]) -> Path:
    path.write_text(json.dumps(records))
    return path


def test_prompt_tokens_carry_no_loss_and_response_tokens_do(gpt2, tmp_path: Path) -> None:
    tpl = ChatTemplate.named("alpaca")
    examples = load_instructions(_write(tmp_path / "d.json", RECORDS), gpt2, tpl, max_length=256)
    batch = collate_sft(examples, pad_id=gpt2.eot_id)
    ids, targets = batch["ids"], batch["targets"]
    assert ids.shape == targets.shape and ids.shape[0] == 2
    for row, rec in enumerate(RECORDS):
        trained = [t for t in targets[row].tolist() if t != IGNORE]
        # exactly the response and its end marker are learned ...
        assert gpt2.decode(trained) == rec["output"] + "<|endoftext|>"
        # ... and each learned target is the next input token (the shift is right)
        n_prompt = len(tpl.encode_messages(gpt2, tpl.alpaca_messages(rec, with_output=False),
                                           add_generation_prompt=True)[0])
        assert (targets[row, : n_prompt - 1] == IGNORE).all()
        assert targets[row, n_prompt - 1].item() == gpt2.encode_ordinary(rec["output"])[0]
    # padding (row 0 is shorter) is never learned
    n0 = len(examples[0]["ids"]) - 1
    assert (targets[0, n0:] == IGNORE).all() and (ids[0, n0:] == gpt2.eot_id).all()
    # --mask-prompt false: every real token is learned, padding still is not
    all_ex = load_instructions(tmp_path / "d.json", gpt2, tpl, max_length=256, mask_prompt=False)
    b2 = collate_sft(all_ex, pad_id=gpt2.eot_id)
    assert (b2["targets"][0, :n0] == b2["ids"][0, 1 : n0 + 1]).all() and (b2["targets"][0, n0:] == IGNORE).all()


def test_packing_ignores_targets_across_boundaries() -> None:
    a = {"ids": [1, 2, 3, 4], "mask": [0, 0, 1, 1]}
    b = {"ids": [5, 6, 7], "mask": [0, 1, 1]}
    c = {"ids": [8, 9, 10, 11, 12], "mask": [0, 0, 0, 1, 1]}
    rows = pack_examples([a, b, c], context_length=7)  # rows hold up to 8 tokens
    assert [r["ids"] for r in rows] == [[1, 2, 3, 4, 5, 6, 7], [8, 9, 10, 11, 12]]
    batch = collate_sft(rows, pad_id=0)
    assert batch["positions"].tolist() == [[0, 1, 2, 3, 0, 1], [0, 1, 2, 3, 4, 5]]  # restart per example
    # targets: 2,3,4 | (4 -> 5 crosses the boundary: ignored) | 6,7 ; mask picks 3,4 and 6,7
    assert batch["targets"][0].tolist() == [IGNORE, 3, 4, IGNORE, 6, 7]
    assert batch["targets"][1].tolist() == [IGNORE, IGNORE, 11, 12, IGNORE, IGNORE]


def test_epoch_batches_resume_exactly_and_ranks_partition() -> None:
    examples = list(range(50))

    def collate(xs: list[int]) -> dict[str, torch.Tensor]:
        return {"ids": torch.tensor(xs)}

    lengths = [x % 7 for x in examples]
    full = EpochBatches(examples, 4, collate, seed=3, lengths=lengths)
    seq = [next(full)["ids"].tolist() for _ in range(30)]  # crosses two epoch boundaries (12 per epoch)
    part = EpochBatches(examples, 4, collate, seed=3, lengths=lengths)
    for _ in range(17):
        next(part)
    resumed = EpochBatches(examples, 4, collate, seed=3, lengths=lengths)
    resumed.load_state_dict(part.state_dict())
    assert [next(resumed)["ids"].tolist() for _ in range(13)] == seq[17:]
    # length grouping: each batch holds similar lengths
    assert sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in seq[:12]) <= 12
    # two ranks draw exactly the single process's batches, interleaved
    r0 = EpochBatches(examples, 4, collate, seed=3, rank=0, world_size=2, lengths=lengths)
    r1 = EpochBatches(examples, 4, collate, seed=3, rank=1, world_size=2, lengths=lengths)
    assert [x for _ in range(6) for x in (next(r0)["ids"].tolist(), next(r1)["ids"].tolist())] == seq[:12]


def test_classification_from_headerless_tsv_and_bad_labels(gpt2, tmp_path: Path) -> None:
    tsv = tmp_path / "sms.tsv"
    tsv.write_text("".join(f"{'spam' if i % 3 == 0 else 'ham'}\tmessage \"number {i}\n" for i in range(30)))
    data = load_classification(tsv, gpt2, columns=("label", "text"), val_fraction=0.1, test_fraction=0.2,
                               balance="undersample")
    assert data.labels == ["ham", "spam"] and len(data.test) == 6 and len(data.val) == 3
    counts = [sum(1 for _, y in data.train if y == c) for c in (0, 1)]
    assert counts[0] == counts[1]  # undersampled to the minority class
    assert gpt2.decode(data.test[0][0]).startswith('message "number')
    batch = collate_classification([([5, 6, 7], 1), ([9], 0)], pad_id=0, pad_to=20)
    assert batch["ids"].shape == (2, 20) and batch["last"].tolist() == [2, 0] and batch["labels"].tolist() == [1, 0]
    with pytest.raises(ScratchlmError, match=r"column 'text' \(--text-field\) is not in .*--columns"):
        load_classification(tsv, gpt2)
    one = tmp_path / "one.csv"
    one.write_text("text,label\na,x\nb,x\n")
    with pytest.raises(ScratchlmError, match="has only one class"):
        load_classification(one, gpt2)


def test_bad_instruction_and_preference_records(gpt2, tmp_path: Path) -> None:
    tpl = ChatTemplate.named("chatml")
    tpl.add_special_tokens(gpt2)
    with pytest.raises(ScratchlmError, match=r"record 1 has no 'output' field"):
        load_instructions(_write(tmp_path / "a.json", [RECORDS[0], {"instruction": "x"}]), gpt2, tpl, 64)
    pref = [{"instruction": "Say hi.", "chosen": "Hi!", "rejected": "Go away."},
            {"prompt": [{"role": "user", "content": "Hi?"}], "chosen": "Hello.", "rejected": "Hello."}]
    path = _write(tmp_path / "p.json", pref)
    with pytest.raises(ScratchlmError, match=r"record 1 \(and 0 more\) has chosen equal to rejected"):
        load_preferences(path, gpt2, tpl, 64)
    pairs = load_preferences(path, gpt2, tpl, 64, drop_equal=True)
    batch = collate_preferences(pairs, pad_id=0)
    assert batch["chosen_ids"].shape == batch["rejected_ids"].shape
    learned = [t for t in batch["chosen_targets"][0].tolist() if t != IGNORE]
    assert gpt2.decode(learned) == "Hi!<|im_end|>\n"


def test_packed_rows_give_each_example_its_unpacked_loss() -> None:
    """Correct packing masks: per-token losses in a packed row equal those of each example alone."""
    from scratchlm.model import GPT, ModelConfig

    torch.manual_seed(0)
    model = GPT(ModelConfig.from_preset("llama-tiny", vocab_size=50)).eval()
    examples = [
        {"ids": [1, 2, 3, 4, 5], "mask": [0, 0, 1, 1, 1]},
        {"ids": [6, 7, 8, 9], "mask": [0, 1, 1, 1]},
    ]

    def token_losses(batch: dict) -> torch.Tensor:
        logits = model(batch["ids"], positions=batch.get("positions"))
        losses = torch.nn.functional.cross_entropy(logits.transpose(1, 2), batch["targets"], reduction="none")
        return losses[batch["targets"] != IGNORE]

    with torch.no_grad():
        packed = token_losses(collate_sft(pack_examples(examples, context_length=16), pad_id=0))
        alone = torch.cat([token_losses(collate_sft([ex], pad_id=0)) for ex in examples])
    torch.testing.assert_close(packed, alone, rtol=0, atol=1e-5)

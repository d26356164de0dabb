"""Multiple choice: scoring against hand computation, a trained model at 100%, shuffled labels near chance,
deterministic few-shot prompts, and the native formats of HellaSwag, ARC and MMLU."""

from __future__ import annotations

import io
import json
import math
import random
import tarfile
from pathlib import Path

import pytest
import torch

from scratchlm.errors import ScratchlmError
from scratchlm.eval.fewshot import (
    MCItem,
    build_prompt,
    continuation_logprobs,
    encode_pair,
    evaluate_mc,
    read_jsonl,
    sample_shots,
)
from scratchlm.eval.tasks import arc_items, hellaswag_items, load_task, mmlu_from_tar, mmlu_items
from scratchlm.model import GPT, ModelConfig
from scratchlm.tokenizer import CharTokenizer

# ---- scoring against hand computation ------------------------------------------------------------------------


def test_loglikelihood_and_acc_norm_by_hand(bigram, abc_tokenizer) -> None:
    # bigram P(next | prev): a -> (a .25, b .5, ' ' .25); b -> (.25, .25, .5); ' ' -> (.5, .25, .25)
    # context "ab"; choice "a" -> " a": P(' '|b) P(a|' ') = .5 * .5; choice "bbb" -> .5 * .25 * .25 * .25
    (ctx, cont), = [encode_pair(abc_tokenizer, "ab", " a")]
    assert (ctx, cont) == ([0, 1], [2, 0])
    lls = continuation_logprobs(bigram, [encode_pair(abc_tokenizer, "ab", " " + c) for c in ("a", "bbb")], 16)
    assert lls[0] == pytest.approx(math.log(0.25), rel=1e-6)
    assert lls[1] == pytest.approx(math.log(0.5 * 0.25**3), rel=1e-6)
    # acc: "a" wins on the sum. acc_norm divides by characters: log(.25)/1 = -1.386 < log(.0078)/3 = -1.617? no:
    r = evaluate_mc(bigram, abc_tokenizer, [MCItem("ab", ("a", "bbb"), 1)])
    assert r.items[0]["pred"] == 0 and r.acc == 0.0
    assert math.log(0.25) / 1 > math.log(0.5 * 0.25**3) / 3  # so acc_norm also picks "a"
    assert r.items[0]["pred_norm"] == 0 and r.acc_norm == 0.0


def test_acc_norm_prefers_the_longer_choice_when_per_char_better(bigram, abc_tokenizer) -> None:
    # after "a": " b" = P(' '|a) P(b|' ') = .25*.25 = 1/16 (1 char); " ab ab" : .25*.5*.5*.5*.5*.5 = 1/128 (5 chars)
    r = evaluate_mc(bigram, abc_tokenizer, [MCItem("a", ("b", "ab ab"), 1)])
    assert r.items[0]["pred"] == 0 and r.items[0]["pred_norm"] == 1
    assert (r.acc, r.acc_norm) == (0.0, 1.0)


def test_long_context_is_cut_from_the_left(bigram, abc_tokenizer) -> None:
    # the bigram model only looks at the previous token, so cutting the context leaves the score unchanged
    full = continuation_logprobs(bigram, [encode_pair(abc_tokenizer, "ab ab ab ab", " b")], 64)
    cut = continuation_logprobs(bigram, [encode_pair(abc_tokenizer, "ab ab ab ab", " b")], 3)
    assert full == pytest.approx(cut, rel=1e-6)


# ---- few-shot sampling ------------------------------------------------------------------------------------------


def test_fewshot_prompts_are_deterministic() -> None:
    pool = [MCItem(f"q{i}:", ("x", "y"), i % 2) for i in range(10)]
    item = MCItem("Q:", ("x", "y"), 0, description="Desc.\n\n")
    first = [build_prompt(item, sample_shots(pool, 3, seed=7, index=i)) for i in range(5)]
    again = [build_prompt(item, sample_shots(pool, 3, seed=7, index=i)) for i in range(5)]
    other = [build_prompt(item, sample_shots(pool, 3, seed=8, index=i)) for i in range(5)]
    assert first == again and first != other
    # str seeds go through sha512: the same prompt in every process and Python version (a known answer)
    assert first[0] == "Desc.\n\nq0: x\n\nq6: x\n\nq5: y\n\nQ:"
    assert all(s is not pool[3] for s in sample_shots(pool, 9, seed=1, index=3, exclude=3))
    with pytest.raises(ScratchlmError, match="--shots 10 needs 10"):
        sample_shots(pool, 10, seed=1, index=0, exclude=0)


# ---- a trained model ---------------------------------------------------------------------------------------------

WORDS = ["cat", "dog", "owl", "emu", "yak", "eel", "ant", "bee"]


def _synthetic_task(n: int, seed: int) -> list[MCItem]:
    """'key c:' -> a fixed word (the key's letter decides it); the other choices are three other words."""
    rng = random.Random(seed)
    items = []
    for i in range(n):
        right = WORDS[i % len(WORDS)]
        choices = [right] + rng.sample([w for w in WORDS if w != right], 3)
        rng.shuffle(choices)
        items.append(MCItem(f"key {chr(ord('a') + i)}:", tuple(choices), choices.index(right)))
    return items


@pytest.fixture(scope="module")
def trained() -> tuple[GPT, CharTokenizer, list[MCItem]]:
    """A 2-layer, width-32 GPT trained with plain AdamW on the task's text until it knows every answer."""
    items = _synthetic_task(20, seed=0)
    docs = [it.context + " " + it.right_choice() for it in items]
    tok = CharTokenizer.train(docs + ["\n"])
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=tok.vocab_size, context_length=48, n_layer=2, n_head=2, d_model=32))
    steps = 400  # 300 reach 100% for seeds 0-3; 400 for a margin
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    decay = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1 - s / steps)  # linear to 0: settles the answers
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        # 8 rows of 3 random documents joined as few-shot prompts join them: 34 tokens each
        rows = [torch.randperm(len(docs), generator=gen)[:3].tolist() for _ in range(8)]
        ids = torch.tensor([tok.encode_ordinary("\n\n".join(docs[i] for i in row)) for row in rows])  # (8, 34)
        logits = model(ids[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        decay.step()
    return model, tok, items


def test_trained_model_scores_100_percent(trained) -> None:
    model, tok, items = trained
    zero = evaluate_mc(model, tok, items, shots=0)
    assert (zero.acc, zero.acc_norm, zero.n) == (1.0, 1.0, 20)
    two = evaluate_mc(model, tok, items, shots=2, seed=3, batch_size=5)
    assert (two.acc, two.acc_norm) == (1.0, 1.0)


def test_shuffled_labels_score_near_chance(trained) -> None:
    model, tok, items = trained
    rng = random.Random(1)
    shuffled = [MCItem(it.context, it.choices, rng.randrange(4)) for it in items]
    r = evaluate_mc(model, tok, shuffled, shots=0)
    expected = sum(s.label == it.label for s, it in zip(shuffled, items)) / len(items)  # the model keeps its answers
    assert r.acc == pytest.approx(expected) and abs(r.acc - 0.25) <= 0.15


# ---- task files and native formats --------------------------------------------------------------------------


def test_jsonl_schema_and_label_out_of_range(tmp_path: Path) -> None:
    good = tmp_path / "t.jsonl"
    good.write_text('{"context": "2+2=", "choices": ["4", "5"], "label": 0}\n\n{"context": "c", "choices": ["a", "b"], "label": 1}\n')
    assert read_jsonl(good) == [MCItem("2+2=", ("4", "5"), 0), MCItem("c", ("a", "b"), 1)]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"context": "x", "choices": ["a", "b"], "label": 0}\n{"context": "y", "choices": ["a", "b"], "label": 2}\n')
    with pytest.raises(ScratchlmError) as e:
        read_jsonl(bad)
    assert str(e.value) == f"{bad}:2: label 2 is out of range for 2 choices; use an index 0..1"
    (tmp_path / "j.jsonl").write_text("{not json\n")
    with pytest.raises(ScratchlmError, match=r"j.jsonl:1: not valid JSON"):
        read_jsonl(tmp_path / "j.jsonl")
    with pytest.raises(ScratchlmError, match="unknown task 'nope'"):
        load_task("nope")


HELLASWAG_LINE = {
    "ind": 4, "activity_label": "Removing ice from car", "ctx_a": "Then, the man writes over the snow covering the window of a car, and a woman wearing winter clothes smiles.",
    "ctx_b": "then", "ctx": "...", "split": "val", "split_type": "indomain", "label": 3,
    "endings": [", the man adds wax to the windshield and cuts it.", ", a person board a ski lift, while two men supporting the head of the person wearing winter clothes snow as the we girls sled.", ", the man puts on a christmas coat, knitted with netting.", ", the man continues removing the snow on his car."],
    "source_id": "activitynet~v_-1IBHYS3L-Y",
}
WIKIHOW_LINE = {
    "ind": 9, "activity_label": "Personal Care and Style", "ctx_a": "[header] How to dye your hair [title] Pick a color.",
    "ctx_b": "", "label": "0", "endings": ["[step] Go to the store [substeps] then buy it.", "b", "c", "d"],
}


def test_hellaswag_native_format() -> None:
    items = hellaswag_items([json.dumps(HELLASWAG_LINE), json.dumps(WIKIHOW_LINE)])
    assert items[0].context == ("Removing ice from car: Then, the man writes over the snow covering the window of a car, "
                                "and a woman wearing winter clothes smiles. Then")
    assert items[0].choices[3] == ", the man continues removing the snow on his car." and items[0].label == 3
    # [title] becomes a sentence break, other [markers] go, double spaces collapse (lm-evaluation-harness)
    assert items[1].context == "Personal Care and Style: How to dye your hair. Pick a color."
    # "[step] " goes after the strip, so a space stays in front, as in lm-evaluation-harness
    assert items[1].choices[0] == " Go to the store then buy it." and items[1].label == 0


def test_arc_native_format() -> None:
    line = {"id": "Mercury_7175875", "question": {"stem": "An astronomer observes that a planet rotates faster. What is the most likely effect?",
            "choices": [{"text": "Planetary density will decrease.", "label": "A"}, {"text": "Planetary years will become longer.", "label": "B"},
                        {"text": "Planetary days will become shorter.", "label": "C"}, {"text": "Planetary gravity will become stronger.", "label": "D"}]},
            "answerKey": "C"}
    numeric = {"id": "x", "question": {"stem": "Q?", "choices": [{"text": "one", "label": "1"}, {"text": "two", "label": "2"}, {"text": "three", "label": "3"}]},
               "answerKey": "2"}
    items = arc_items([json.dumps(line), json.dumps(numeric)])
    assert items[0] == MCItem("Question: An astronomer observes that a planet rotates faster. What is the most likely effect?\nAnswer:",
                              ("Planetary density will decrease.", "Planetary years will become longer.",
                               "Planetary days will become shorter.", "Planetary gravity will become stronger."), 2)
    assert items[1].label == 1 and len(items[1].choices) == 3


def _tar_with(tmp_path: Path, files: dict[str, str]) -> Path:
    path = tmp_path / "data.tar"
    with tarfile.open(path, "w") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_mmlu_native_format(tmp_path: Path) -> None:
    row = 'Find the degree for the given field extension Q(sqrt(2)) over Q.,0,2,4,1,C\n'
    # published CSVs quote fields with commas: csv reading keeps them whole
    quoted = '"Let A be a set, B a subset.",yes,no,"maybe, sometimes",never,C\n'
    dev = "".join(f"dev q{i},a,b,c,d,A\n" for i in range(5))
    path = _tar_with(tmp_path, {
        "data/test/abstract_algebra_test.csv": row + quoted,
        "data/dev/abstract_algebra_dev.csv": dev,
        "data/test/anatomy_test.csv": "What is it?,w,x,y,z,D\n",
        "data/dev/anatomy_dev.csv": dev,
        "data/val/anatomy_val.csv": "v,w,x,y,z,A\n",
    })
    test, dev_items, subjects = mmlu_from_tar(path)
    assert subjects == ["abstract_algebra", "abstract_algebra", "anatomy"]
    assert test[0] == MCItem(
        "Find the degree for the given field extension Q(sqrt(2)) over Q.\nA. 0\nB. 2\nC. 4\nD. 1\nAnswer:",
        ("A", "B", "C", "D"), 2,
        "The following are multiple choice questions (with answers) about abstract algebra.\n\n")
    assert test[1].context.endswith("C. maybe, sometimes\nD. never\nAnswer:")
    assert len(dev_items["anatomy"]) == 5
    with pytest.raises(ScratchlmError, match="answer letter"):
        mmlu_items([["q", "a", "b", "c", "d", "E"]], "x")


def test_named_tasks_through_the_asset_registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`--task hellaswag|arc-easy|mmlu` read their registered assets (here: a fake mirror of hand-made samples)."""
    import dataclasses
    import hashlib

    from scratchlm import assets

    files = {
        "hellaswag-val": json.dumps(HELLASWAG_LINE) + "\n",
        "hellaswag-train": json.dumps(WIKIHOW_LINE) + "\n" + json.dumps(HELLASWAG_LINE) + "\n",
        "arc-easy-test": json.dumps({"id": "1", "question": {"stem": "Q?", "choices": [
            {"text": "yes", "label": "A"}, {"text": "no", "label": "B"}]}, "answerKey": "B"}) + "\n",
    }
    for name, text in files.items():
        asset = assets.REGISTRY[name]
        (tmp_path / asset.path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / asset.path).write_text(text)
        sha = hashlib.sha256(text.encode()).hexdigest()
        monkeypatch.setitem(assets.REGISTRY, name, dataclasses.replace(asset, sha256=sha))
    tar = _tar_with(tmp_path, {"data/test/virology_test.csv": "q,a,b,c,d,B\n", "data/dev/virology_dev.csv": "d,a,b,c,d,A\n"})
    (tmp_path / "mmlu").mkdir()
    tar.rename(tmp_path / assets.REGISTRY["mmlu"].path)
    sha = hashlib.sha256((tmp_path / assets.REGISTRY["mmlu"].path).read_bytes()).hexdigest()
    monkeypatch.setitem(assets.REGISTRY, "mmlu", dataclasses.replace(assets.REGISTRY["mmlu"], sha256=sha))
    monkeypatch.setenv("SCRATCHLM_MIRROR", str(tmp_path))

    hs = load_task("hellaswag")
    assert len(hs.items) == 1 and hs.pool is not None and len(hs.pool) == 2  # shots from the train split
    arc = load_task("arc-easy")
    assert arc.items[0].label == 1 and arc.pool is None  # shots from the other test items
    mmlu = load_task("mmlu")
    assert mmlu.items[0].label == 1 and mmlu.item_pools is not None and mmlu.item_pools[0][0].context.startswith("d\nA.")

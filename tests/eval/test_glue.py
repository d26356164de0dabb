"""GLUE and SuperGLUE: hand-made samples in each task's official layout -> records, prompts and metrics checked
against hand computation; bad input; the named assets; `scratchlm eval glue|superglue` end to end, the periodic
hook; GPTs trained in the test: on SST-2's prompt pattern (100%; shuffled labels near chance), and on every task's
samples (each task's metrics equal those of the gold answers)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import random
import string
import zipfile
from pathlib import Path

import pytest
import torch

from scratchlm import assets, checkpoint
from scratchlm.cli.main import main
from scratchlm.data.glue import Record, get_task, load_records, task_names
from scratchlm.errors import ScratchlmError
from scratchlm.eval import metrics as M
from scratchlm.eval.glue import (
    METRICS,
    Template,
    evaluate_task,
    load_templates,
    predictions,
    render,
    score_metrics,
    template_for,
)
from scratchlm.eval.periodic import evaluate_tasks, parse_task
from scratchlm.model import GPT, ModelConfig
from scratchlm.tokenizer import CharTokenizer

# ---- native-format samples: (files of the official zip, expected first eval record's prompt and choices) -------

GLUE = {
    "cola": {
        "CoLA/train.tsv": "gj04\t1\t\tOur friends won't buy this analysis, let alone the next one we propose.\n",
        "CoLA/dev.tsv": "gj04\t1\t\tThe sailors rode the breeze clear of the rocks.\n"
                        "gj04\t0\t*\tThe more we study verbs, the crazier they get get.\n",
    },
    "sst2": {
        "SST-2/train.tsv": "sentence\tlabel\nhide new secretions from the parental units \t0\n",
        "SST-2/dev.tsv": "sentence\tlabel\nit 's a charming and often affecting journey . \t1\n"
                         "unflinchingly bleak and desperate \t0\n",
    },
    "mrpc": {
        "MRPC/train.tsv": "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
                          "1\t702876\t702977\tAmrozi accused his brother .\tReferring to him , Amrozi accused his brother .\n",
        # a bare quote inside a sentence, as in the published files (read with QUOTE_NONE)
        "MRPC/dev.tsv": "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
                        "1\t1355540\t1355592\tHe said the pie business doesn 't fit .\t\" The pie business does not fit .\n"
                        "0\t2029631\t2029565\tMagnarelli said Racicot hated the Iraqi regime .\tHis wife said he was \" 100 percent behind George Bush \" .\n",
    },
    "qqp": {
        "QQP/train.tsv": "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n"
                         "133273\t213221\t213222\tHow is the life of a math student?\tWhich level of prepration is enough?\t0\n",
        "QQP/dev.tsv": "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n"
                       "201359\t303345\t303346\tWhy are African-Americans so beautiful?\tWhy are hispanics so beautiful?\t0\n",
    },
    "stsb": {
        "STS-B/train.tsv": "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
                           "0\tmain-captions\tMSRvid\t2012test\t0001\tnone\tnone\tA plane is taking off.\tAn air plane is taking off.\t5.000\n",
        "STS-B/dev.tsv": "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
                         "0\tmain-captions\tMSRvid\t2012test\t0000\tnone\tnone\tA man with a hard hat is dancing.\tA man wearing a hard hat is dancing.\t5.000\n"
                         "1\tmain-captions\tMSRvid\t2012test\t0002\tnone\tnone\tA young child is riding a horse.\tA dog is barking.\t1.250\n",
    },
    "mnli": {
        "MNLI/train.tsv": "index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\tsentence1_parse\t"
                          "sentence2_parse\tsentence1\tsentence2\tlabel1\tgold_label\n"
                          "0\t31193\t31193n\tgovernment\t( ( Conceptually cream ) )\t( ( ( Product and ) ) )\t(ROOT)\t(ROOT)\t"
                          "Conceptually cream skimming has two basic dimensions.\tProduct and geography are what make cream skimming work. \tneutral\tneutral\n",
        "MNLI/dev_matched.tsv": "index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\tsentence1_parse\t"
                                "sentence2_parse\tsentence1\tsentence2\tlabel1\tlabel2\tlabel3\tlabel4\tlabel5\tgold_label\n"
                                "0\t63735\t63735n\tslate\t( ( The ) )\t( ( The ) )\t(ROOT)\t(ROOT)\tThe new rights are nice enough\t"
                                "Everyone really likes the newest benefits \tneutral\tentailment\tneutral\tneutral\tneutral\tneutral\n",
    },
    "qnli": {
        "QNLI/train.tsv": "index\tquestion\tsentence\tlabel\n0\tWhen did the third Digimon series begin?\tUnlike the two seasons before it, the third season is darker.\tnot_entailment\n",
        "QNLI/dev.tsv": "index\tquestion\tsentence\tlabel\n0\tWhat came into force after the new constitution was herald?\t"
                        "As of that day, the new constitution heralding the Second Republic came into force.\tentailment\n",
    },
    "rte": {
        "RTE/train.tsv": "index\tsentence1\tsentence2\tlabel\n0\tNo Weapons of Mass Destruction Found in Iraq Yet.\tWeapons of Mass Destruction Found in Iraq.\tnot_entailment\n",
        "RTE/dev.tsv": "index\tsentence1\tsentence2\tlabel\n0\tDana Reeve, the widow of the actor Christopher Reeve, has died of lung cancer at age 44.\t"
                       "Christopher Reeve had an accident.\tnot_entailment\n",
    },
    "wnli": {
        "WNLI/train.tsv": "index\tsentence1\tsentence2\tlabel\n0\tI stuck a pin through a carrot. When I pulled the pin out, it had a hole.\tThe carrot had a hole.\t1\n",
        "WNLI/dev.tsv": "index\tsentence1\tsentence2\tlabel\n0\tThe drain is clogged with hair. It has to be cleaned.\tThe hair has to be cleaned.\t0\n",
    },
}

_MULTIRC = {"idx": 0, "version": 1.1, "passage": {
    "text": "Susan wanted to have a birthday party. She called all of her friends.",
    "questions": [
        {"idx": 0, "question": "Who did Susan call?", "answers": [
            {"idx": 0, "text": "Her friends", "label": 1}, {"idx": 1, "text": "Her mom", "label": 0}]},
        {"idx": 1, "question": "What did Susan want?", "answers": [{"idx": 2, "text": "A party", "label": 1}]},
    ]}}
_RECORD_TEXT = "The US president visited Paris.\n@highlight\nObama in France\n@highlight\nTalks with Macron"
_RECORD = {"source": "Daily mail", "idx": 0, "passage": {
    "text": _RECORD_TEXT,
    # end is inclusive in the files: text[start:end + 1]
    "entities": [{"start": 4, "end": 5}, {"start": 25, "end": 29}, {"start": 43, "end": 47}, {"start": 52, "end": 57}, {"start": 81, "end": 86},
                 {"start": 4, "end": 5}]},
    "qas": [{"idx": 0, "query": "@placeholder met the French leader.", "answers": [{"start": 43, "end": 47, "text": "Obama"}]}]}

SUPERGLUE = {
    "boolq": {"question": "do iran and afghanistan speak the same language", "idx": 0, "label": True,
              "passage": "Persian language -- Persian is spoken in Iran and Afghanistan."},
    "cb": {"premise": "It was a complex language. Not written down but handed down.", "idx": 0,
           "hypothesis": "the language was peeled down", "label": "contradiction"},
    "copa": {"premise": "My body cast a shadow over the grass.", "choice1": "The sun was rising.",
             "choice2": "The grass was cut.", "question": "cause", "idx": 0, "label": 0},
    "multirc": _MULTIRC,
    "record": _RECORD,
    "rte": {"premise": "No Weapons of Mass Destruction Found in Iraq Yet.", "idx": 0,
            "hypothesis": "Weapons of Mass Destruction Found in Iraq.", "label": "not_entailment"},
    "wic": {"word": "place", "sentence1": "Do you want to come over to my place later?", "idx": 0, "label": False,
            "sentence2": "A political system with no place for the less prominent groups.", "start1": 31,
            "start2": 27, "end1": 36, "end2": 32, "version": 1.1},
    "wsc": {"text": "Mark told Pete many lies about himself. He should have been more truthful.", "idx": 0,
            "target": {"span2_index": 7, "span1_index": 0, "span1_text": "Mark", "span2_text": "He"}, "label": True},
}
FOLDERS = {"boolq": "BoolQ", "cb": "CB", "copa": "COPA", "multirc": "MultiRC", "record": "ReCoRD", "rte": "RTE",
           "wic": "WiC", "wsc": "WSC"}

EXPECTED = {  # (suite, task): (first eval record's prompt, its choices, its label)
    ("glue", "cola"): ("The sailors rode the breeze clear of the rocks.\nQuestion: Does this sentence make sense?\nAnswer:",
                       ("no", "yes"), 1),
    ("glue", "sst2"): ("it 's a charming and often affecting journey .\nQuestion: Is this sentence positive or negative?\n"
                       "Answer:", ("negative", "positive"), 1),
    ("glue", "mrpc"): ("Sentence 1: He said the pie business doesn 't fit .\nSentence 2: \" The pie business does not fit .\n"
                       "Question: Do both sentences mean the same thing?\nAnswer:", ("no", "yes"), 1),
    ("glue", "qqp"): ("Question 1: Why are African-Americans so beautiful?\nQuestion 2: Why are hispanics so beautiful?\n"
                      "Question: Do both questions ask the same thing?\nAnswer:", ("no", "yes"), 0),
    ("glue", "stsb"): ("Sentence 1: A man with a hard hat is dancing.\nSentence 2: A man wearing a hard hat is dancing.\n"
                       "Question: On a scale from 0 to 5, how similar in meaning are the two sentences?\nAnswer:",
                       ("0", "1", "2", "3", "4", "5"), 5),
    ("glue", "mnli"): ("The new rights are nice enough\nQuestion: Everyone really likes the newest benefits True, False or "
                       "Neither?\nAnswer:", ("True", "Neither", "False"), 1),
    ("glue", "qnli"): ("What came into force after the new constitution was herald?\nAs of that day, the new constitution "
                       "heralding the Second Republic came into force.\nQuestion: Does this response answer the question?\n"
                       "Answer:", ("yes", "no"), 0),
    ("glue", "rte"): ("Dana Reeve, the widow of the actor Christopher Reeve, has died of lung cancer at age 44.\nQuestion: "
                      "Christopher Reeve had an accident. True or False?\nAnswer:", ("True", "False"), 1),
    ("glue", "wnli"): ("The drain is clogged with hair. It has to be cleaned.\nQuestion: The hair has to be cleaned. True or "
                       "False?\nAnswer:", ("False", "True"), 0),
    ("superglue", "boolq"): ("Persian language -- Persian is spoken in Iran and Afghanistan.\nQuestion: do iran and "
                             "afghanistan speak the same language?\nAnswer:", ("no", "yes"), 1),
    ("superglue", "cb"): ("It was a complex language. Not written down but handed down.\nQuestion: the language was peeled "
                          "down. True, False, or Neither?\nAnswer:", ("True", "False", "Neither"), 1),
    ("superglue", "copa"): ("My body cast a shadow over the grass because", ("the sun was rising.", "the grass was cut."), 0),
    ("superglue", "multirc"): ("Susan wanted to have a birthday party. She called all of her friends.\nQuestion: Who did "
                               "Susan call?\nAnswer: Her friends\nIs the answer correct?", ("no", "yes"), 1),
    ("superglue", "record"): ("The US president visited Paris.\n\n  - Obama in France.\n  - Talks with Macron.\n",
                              ("- France met the French leader.", "- Macron met the French leader.",
                               "- Obama met the French leader.", "- Paris met the French leader.",
                               "- US met the French leader."), 2),
    ("superglue", "rte"): ("No Weapons of Mass Destruction Found in Iraq Yet.\nQuestion: Weapons of Mass Destruction Found "
                           "in Iraq. True or False?\nAnswer:", ("True", "False"), 1),
    ("superglue", "wic"): ("Sentence 1: Do you want to come over to my place later?\nSentence 2: A political system with no "
                           "place for the less prominent groups.\nQuestion: Is the word 'place' used in the same way in "
                           "the two sentences above?\nAnswer:", ("no", "yes"), 0),
    ("superglue", "wsc"): ("Passage: Mark told Pete many lies about himself. He should have been more truthful.\n"
                           "Question: In the passage above, does the pronoun \"*He*\" refer to \"*Mark*\"?\nAnswer:",
                           ("no", "yes"), 1),
}


def write_zip(path: Path, files: dict[str, str]) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        for name, text in files.items():
            z.writestr(name, text)
    return path


def superglue_files(name: str) -> dict[str, str]:
    line = json.dumps(SUPERGLUE[name]) + "\n"
    return {f"{FOLDERS[name]}/train.jsonl": line, f"{FOLDERS[name]}/val.jsonl": line}


def official_zip(tmp_path: Path, suite: str, name: str) -> Path:
    files = GLUE[name] if suite == "glue" else superglue_files(name)
    return write_zip(tmp_path / f"{name}.zip", files)


def test_every_task_has_a_sample_and_a_template() -> None:
    assert set(task_names("glue")) == set(GLUE) == {k[1] for k in EXPECTED if k[0] == "glue"}
    assert set(task_names("superglue")) == set(SUPERGLUE) == {k[1] for k in EXPECTED if k[0] == "superglue"}
    for suite in ("glue", "superglue"):
        assert set(load_templates(suite)) == set(task_names(suite))


@pytest.mark.parametrize(("suite", "name"), sorted(EXPECTED))
def test_native_format_to_prompt(tmp_path: Path, suite: str, name: str) -> None:
    task = get_task(suite, name)
    records = load_records(task, "eval", official_zip(tmp_path, suite, name))
    assert load_records(task, "train", official_zip(tmp_path, suite, name))  # the train split reads too
    item = render(template_for(task), records[0], task.key)
    assert (item.context, item.choices, item.label) == EXPECTED[(suite, name)]


def test_unpacked_folder_reads_like_the_zip(tmp_path: Path) -> None:
    for member, text in GLUE["mrpc"].items():
        (tmp_path / member).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / member).write_text(text, encoding="utf-8")
    task = get_task("glue", "mrpc")
    assert load_records(task, "eval", tmp_path) == load_records(task, "eval", official_zip(tmp_path, "glue", "mrpc"))


def test_label_fields_of_the_native_formats(tmp_path: Path) -> None:
    cola = load_records(get_task("glue", "cola"), "eval", official_zip(tmp_path, "glue", "cola"))
    assert [r.label for r in cola] == [1, 0]  # the second column; the third ("*") is the original annotation
    stsb = load_records(get_task("glue", "stsb"), "eval", official_zip(tmp_path, "glue", "stsb"))
    assert [r.label for r in stsb] == [5.0, 1.25]
    multirc = load_records(get_task("superglue", "multirc"), "eval", official_zip(tmp_path, "superglue", "multirc"))
    assert [(r.fields["answer"], r.label, r.group) for r in multirc] == [
        ("Her friends", 1, "0:0"), ("Her mom", 0, "0:0"), ("A party", 1, "0:1")]
    record = load_records(get_task("superglue", "record"), "eval", official_zip(tmp_path, "superglue", "record"))
    assert record[0].options == ("France", "Macron", "Obama", "Paris", "US") and record[0].answers == ("Obama",)
    copa = dataclasses.replace(get_task("superglue", "copa"))
    effect = {**SUPERGLUE["copa"], "question": "effect", "premise": "The man broke his toe!", "label": 1}
    rec = copa.convert([{"_line": "1", **effect}], "x")[0]
    assert render(template_for(copa), rec).context == "The man broke his toe therefore"


# ---- metrics against hand computation -------------------------------------------------------------------------


def _r(label: float, **kw: object) -> Record:
    return Record({}, label, **kw)  # type: ignore[arg-type]


def test_metrics_by_hand() -> None:
    y, p = [1, 0, 1, 1], [1, 1, 0, 1]
    # tp 2, fp 1, fn 1: F1 = 2*2 / (2*2 + 1 + 1)
    assert score_metrics("glue:mrpc", [_r(v) for v in y], p) == pytest.approx({"acc": 0.5, "f1": 4 / 6})
    assert score_metrics("glue:qqp", [_r(v) for v in y], p) == pytest.approx({"acc": 0.5, "f1": 4 / 6})
    # CoLA: tp 1, tn 2, fp 0, fn 1 -> (1*2 - 0) / sqrt(1 * 2 * 2 * 3)
    assert score_metrics("glue:cola", [_r(v) for v in [1, 0, 1, 0]], [1, 0, 0, 0]) == pytest.approx(
        {"mcc": 2 / math.sqrt(12)})
    assert M.matthews([1, 1], [1, 1]) == 0.0  # undefined -> 0, as sklearn
    # CB: per-class F1 1 (entailment), 2/3 (contradiction: tp 1, fp 1), 0 (neutral never predicted)
    assert score_metrics("superglue:cb", [_r(v) for v in [0, 1, 2, 0]], [0, 1, 1, 0]) == pytest.approx(
        {"acc": 0.75, "f1": (1 + 2 / 3 + 0) / 3})
    # MultiRC: question 0:0 all right, 0:1 wrong -> em 1/2; f1a over options: tp 1, fn 1 -> 2/3
    multirc = [_r(1, group="0:0"), _r(0, group="0:0"), _r(1, group="0:1")]
    assert score_metrics("superglue:multirc", multirc, [1, 0, 0]) == pytest.approx({"em": 0.5, "f1a": 2 / 3})
    # ReCoRD: prediction "Barack Obama" vs gold "Obama": em 0, token F1 = 2 * (1/2 * 1) / (1/2 + 1); the second
    # query's gold has two surface forms, the better one counts
    record = [_r(0, options=("Barack Obama", "Paris"), answers=("Obama",)),
              _r(1, options=("US", "the U.S."), answers=("United States", "U.S.")),]
    assert score_metrics("superglue:record", record, [0, 1]) == pytest.approx({"em": 0.5, "f1": (2 / 3 + 1) / 2})
    # STS-B: Pearson by its formula; Spearman of monotone data is 1
    pred, gold = [1.0, 2.0, 3.0, 3.5], [1.0, 2.5, 4.0, 5.0]
    mx, my = sum(pred) / 4, sum(gold) / 4
    cov = sum((a - mx) * (b - my) for a, b in zip(pred, gold))
    r = cov / math.sqrt(sum((a - mx) ** 2 for a in pred) * sum((b - my) ** 2 for b in gold))
    got = score_metrics("glue:stsb", [_r(g) for g in gold], pred)
    assert got == pytest.approx({"pearson": r, "spearman": 1.0})
    assert math.isnan(M.pearson([1.0, 1.0], [1.0, 2.0]))
    # every task reports exactly its official metrics; accuracy-only tasks: 3 of 4 right
    for key, names in METRICS.items():
        if key in ("glue:stsb", "superglue:record"):
            continue
        got = score_metrics(key, [_r(v, group=str(i)) for i, v in enumerate([1, 0, 1, 0])], [1, 0, 0, 0])
        assert tuple(got) == names, key
        if names == ("acc",):
            assert got["acc"] == 0.75


def test_stsb_prediction_is_the_expected_score() -> None:
    template = template_for(get_task("glue", "stsb"))
    lls = [[math.log(p) for p in (0.1, 0.1, 0.1, 0.1, 0.1, 0.5)], [0.0] * 6]
    assert predictions(template, lls) == pytest.approx([0.1 * (0 + 1 + 2 + 3 + 4) + 0.5 * 5, 2.5])
    # a shot's answer is the nearest digit
    assert render(template, Record({"sentence1": "a", "sentence2": "b"}, 3.4)).label == 3


# ---- bad input ------------------------------------------------------------------------------------------------


def test_unknown_task_and_missing_file_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(ScratchlmError) as e:
        get_task("glue", "sst3")
    assert str(e.value) == "unknown glue task 'sst3'; use one of cola, sst2, mrpc, qqp, stsb, mnli, qnli, rte, wnli"
    wrong = write_zip(tmp_path / "SST-2.zip", {"SST-2/train.tsv": GLUE["sst2"]["SST-2/train.tsv"]})
    with pytest.raises(ScratchlmError) as e:
        load_records(get_task("glue", "sst2"), "eval", wrong)
    assert str(e.value) == f"archive {wrong} has no SST-2/dev.tsv; is it the official SST-2.zip?"
    with pytest.raises(ScratchlmError, match=r"BoolQ/val.jsonl:1: missing passage; is this the official file\?"):
        bad = write_zip(tmp_path / "b.zip", {"BoolQ/val.jsonl": '{"question": "q", "label": true}\n'})
        load_records(get_task("superglue", "boolq"), "eval", bad)
    with pytest.raises(ScratchlmError, match="label 'maybe' is not one of entailment, not_entailment"):
        bad = write_zip(tmp_path / "r.zip", {"RTE/dev.tsv": "index\tsentence1\tsentence2\tlabel\n0\ta\tb\tmaybe\n"})
        load_records(get_task("glue", "rte"), "eval", bad)
    with pytest.raises(ScratchlmError, match="eval task 'glue:nope': unknown glue task 'nope'"):
        parse_task("glue:nope")


# ---- named assets -----------------------------------------------------------------------------------------------


def _mirror(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, data: bytes) -> None:
    asset = assets.REGISTRY[name]
    (tmp_path / asset.path).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / asset.path).write_bytes(data)
    monkeypatch.setitem(assets.REGISTRY, name, dataclasses.replace(asset, sha256=hashlib.sha256(data).hexdigest()))


def test_named_assets_and_mrpc_split(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without --data a task reads its registered archive (here a fake mirror of hand-made samples); MRPC is
    split from Microsoft's train file by GLUE's dev ids, as GLUE's download script does."""
    for suite, name in (("glue", "sst2"), ("superglue", "boolq")):
        _mirror(tmp_path, monkeypatch, f"{suite}-{name}", official_zip(tmp_path, suite, name).read_bytes())
    header = "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
    _mirror(tmp_path, monkeypatch, "glue-mrpc-train", (header + "1\t1\t2\tA a .\tA b .\n0\t3\t4\tB a .\tB b .\n"
                                                       "1\t5\t6\tC a .\tC b .\n").encode())
    _mirror(tmp_path, monkeypatch, "glue-mrpc-dev-ids", b"3\t4\n")
    monkeypatch.setenv("SCRATCHLM_MIRROR", str(tmp_path))
    assert load_records(get_task("glue", "sst2"), "eval")[1].fields["sentence"] == "unflinchingly bleak and desperate"
    assert load_records(get_task("superglue", "boolq"), "eval")[0].label == 1
    mrpc = get_task("glue", "mrpc")
    assert [r.fields["sentence1"] for r in load_records(mrpc, "eval")] == ["B a ."]
    assert [r.fields["sentence1"] for r in load_records(mrpc, "train")] == ["A a .", "C a ."]
    for name, asset in assets.REGISTRY.items():  # every task has its archive, with a public URL and a sha256
        if name.startswith(("glue-", "superglue-")):
            assert asset.url.startswith("https://dl.fbaipublicfiles.com/") and len(asset.sha256) == 64


# ---- the commands ------------------------------------------------------------------------------------------

POS, NEG, NOUNS = ["good", "great", "fine", "nice"], ["bad", "awful", "dull", "poor"], ["film", "plot", "cast"]


def sst2_tsv(labels: list[int] | None = None) -> str:
    """SST-2's dev.tsv layout: 'a ADJ NOUN', positive iff the adjective is."""
    rows = [(f"a {a} {n} ", int(a in POS)) for a in POS + NEG for n in NOUNS]
    labels = labels if labels is not None else [y for _, y in rows]
    return "sentence\tlabel\n" + "".join(f"{s}\t{y}\n" for (s, _), y in zip(rows, labels))


def _one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ")
    return err.strip()


@pytest.fixture
def tiny_run(tmp_path: Path) -> Path:
    """An untrained GPT over printable characters (context 512): enough to run every prompt."""
    tok = CharTokenizer(sorted(set(string.printable) - set("\x0b\x0c")))
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=tok.vocab_size, context_length=512, n_layer=1, n_head=2, d_model=16))
    checkpoint.save_step(tmp_path / "run", 1, model, tok)
    return tmp_path / "run"


def test_json_table_and_report_match_the_library(tiny_run: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    data = official_zip(tmp_path, "glue", "mrpc")
    out = tmp_path / "glue.json"
    argv = ["eval", "glue", "--checkpoint", str(tiny_run), "--task", "mrpc", "--data", str(data), "--shots", "1",
            "--json", "--out", str(out)]
    assert main(argv) == 0
    got = json.loads(capsys.readouterr().out)
    model, tok = checkpoint.load(tiny_run)
    task = get_task("glue", "mrpc")
    ref = evaluate_task(model, tok, task, load_records(task, "eval", data), load_records(task, "train", data), shots=1)
    assert got["tasks"] == [ref.summary()] and got["average"] == pytest.approx(ref.score)
    assert set(got["tasks"][0]) >= {"acc", "f1", "score"}
    assert len(json.loads(out.read_text())["results"][0]["items"]["mrpc"]) == 2
    # --templates swaps in a JSON file of prompts
    custom = tmp_path / "t.json"
    custom.write_text(json.dumps({"mrpc": {"prompt": "{sentence1} = {sentence2}?", "choices": ["no", "yes"]}}))
    assert main([*argv[:-2], "--templates", str(custom)]) == 0
    ref = evaluate_task(model, tok, task, load_records(task, "eval", data), load_records(task, "train", data), shots=1,
                        template=Template("{sentence1} = {sentence2}?", ("no", "yes")))
    assert json.loads(capsys.readouterr().out)["tasks"] == [ref.summary()]
    assert main(["eval", "superglue", "--checkpoint", str(tiny_run), "--task", "copa",
                 "--data", str(official_zip(tmp_path, "superglue", "copa"))]) == 0
    header, _, row = capsys.readouterr().out.splitlines()
    assert header.split() == ["task", "shots", "n", "metrics", "score"]
    assert row.split()[:3] == ["copa", "0", "1"] and row.split()[3].startswith("acc=")


def test_bad_inputs_are_one_line_exit_2(tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", "glue", "--checkpoint", str(tiny_run), "--task", "sst3"]) == 2
    assert _one_line_error(capsys) == (
        "error: unknown glue task 'sst3'; use one of cola, sst2, mrpc, qqp, stsb, mnli, qnli, rte, wnli")
    assert main(["eval", "superglue", "--checkpoint", str(tiny_run), "--task", "sst2"]) == 2
    assert "unknown superglue task 'sst2'; use one of boolq, cb, copa" in _one_line_error(capsys)
    wrong = write_zip(tmp_path / "SST-2.zip", {"SST-2/train.tsv": GLUE["sst2"]["SST-2/train.tsv"]})
    out = tmp_path / "r.json"
    assert main(["eval", "glue", "--checkpoint", str(tiny_run), "--task", "sst2", "--data", str(wrong),
                 "--out", str(out)]) == 2
    assert _one_line_error(capsys) == f"error: archive {wrong} has no SST-2/dev.tsv; is it the official SST-2.zip?"
    assert not out.exists()
    assert main(["eval", "glue", "--checkpoint", str(tiny_run), "--task", "sst2,cola", "--data", str(wrong)]) == 2
    assert "one --task at a time" in _one_line_error(capsys)


def test_periodic_hook(tiny_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("scratchlm.eval.periodic._bench_records",
                        lambda suite, name: load_records(get_task(suite, name), "eval",
                                                         official_zip(tmp_path, suite, name)))
    model, tok = checkpoint.load(tiny_run)
    got = evaluate_tasks(model, tok, ["glue:cola@1", "superglue:multirc"], "cpu")
    assert set(got) == {"glue_cola_mcc", "glue_cola_score", "superglue_multirc_em", "superglue_multirc_f1a",
                        "superglue_multirc_score"}
    task = get_task("superglue", "multirc")
    ref = evaluate_task(model, tok, task, load_records(task, "eval", official_zip(tmp_path, "superglue", "multirc")))
    assert got["superglue_multirc_f1a"] == ref.metrics["f1a"] and got["glue_cola_mcc"] == 0.0  # one item: undefined


# ---- a model trained to a known pattern --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer, width-32 GPT trained with AdamW on SST-2 prompts (the shipped template) + their answers, in
    rows of 3 as few-shot prompts join them, until it knows every answer; saved as a checkpoint."""
    task = get_task("glue", "sst2")
    records = [Record({"sentence": s.strip()}, float(y)) for s, y in
               (line.rsplit("\t", 1) for line in sst2_tsv().splitlines()[1:])]
    items = [render(template_for(task), r) for r in records]
    docs = [it.context + " " + it.right_choice() for it in items]
    tok = CharTokenizer.train(docs + ["\n"])
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=tok.vocab_size, context_length=256, n_layer=2, n_head=2, d_model=32))
    steps = 300
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    decay = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1 - s / steps)
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        rows = [torch.randperm(len(docs), generator=gen)[:3].tolist() for _ in range(8)]
        seqs = [tok.encode_ordinary("\n\n".join(docs[i] for i in row)) for row in rows]
        ids = torch.tensor([s[: min(map(len, seqs))] for s in seqs])  # (8, T)
        loss = torch.nn.functional.cross_entropy(model(ids[:, :-1]).flatten(0, 1), ids[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        decay.step()
    run = tmp_path_factory.mktemp("sst2") / "run"
    checkpoint.save_step(run, steps, model, tok)
    return run


@pytest.mark.slow
def test_trained_model_scores_100_percent_and_shuffled_labels_near_chance(
        trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = write_zip(tmp_path / "SST-2.zip", {"SST-2/train.tsv": sst2_tsv(), "SST-2/dev.tsv": sst2_tsv()})
    base = ["eval", "glue", "--checkpoint", str(trained), "--task", "sst2", "--json"]
    assert main([*base, "--data", str(data)]) == 0
    assert json.loads(capsys.readouterr().out)["tasks"][0]["acc"] == 1.0
    assert main([*base, "--data", str(data), "--shots", "2", "--seed", "3"]) == 0
    assert json.loads(capsys.readouterr().out)["tasks"][0]["acc"] >= 0.9
    true = [int(line.rsplit("\t", 1)[1]) for line in sst2_tsv().splitlines()[1:]]
    rng = random.Random(1)
    shuffled = [rng.randrange(2) for _ in true]
    noise = write_zip(tmp_path / "noise.zip", {"SST-2/train.tsv": sst2_tsv(), "SST-2/dev.tsv": sst2_tsv(shuffled)})
    assert main([*base, "--data", str(noise)]) == 0
    acc = json.loads(capsys.readouterr().out)["tasks"][0]["acc"]
    agree = sum(a == b for a, b in zip(true, shuffled)) / len(true)  # the model keeps its (right) answers
    assert acc == pytest.approx(agree) and abs(acc - 0.5) <= 0.2


@pytest.mark.slow
def test_model_trained_on_every_task_scores_its_known_answers(tmp_path: Path) -> None:
    """A 2-layer GPT learns the answer after each task's prompts (loss on the answer tokens only, as in SFT); then
    every task's metrics equal those of predicting the gold labels, computed by the same hand-checked metrics."""
    data, docs = {}, []
    for suite, name in sorted(EXPECTED):
        task = get_task(suite, name)
        records = load_records(task, "eval", official_zip(tmp_path, suite, name))
        items = [render(template_for(task), r) for r in records]
        data[task.key] = (task, records)
        docs += [(it.context, " " + it.right_choice(), "".join(it.choices)) for it in items]
    tok = CharTokenizer.train([a + b + c for a, b, c in docs])
    encoded = [(tok.encode_ordinary(a + b), len(tok.encode_ordinary(b))) for a, b, _ in docs]
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=tok.vocab_size, context_length=256, n_layer=2, n_head=2, d_model=32))
    steps = 150
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    decay = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1 - s / steps)
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        rows = [encoded[i] for i in torch.randperm(len(encoded), generator=gen)[:8].tolist()]
        T = max(len(ids) for ids, _ in rows)
        inputs = torch.zeros(len(rows), T, dtype=torch.long)  # (B, T), right-padded
        targets = torch.full((len(rows), T), -100)  # only the answer tokens carry loss
        for b, (ids, n) in enumerate(rows):
            inputs[b, : len(ids)] = torch.tensor(ids)
            targets[b, len(ids) - 1 - n : len(ids) - 1] = torch.tensor(ids[len(ids) - n :])
        loss = torch.nn.functional.cross_entropy(model(inputs).flatten(0, 1), targets.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        decay.step()
    for key, (task, records) in data.items():
        got = evaluate_task(model, tok, task, records)
        if key == "glue:stsb":  # two items, scores 5 and 1.25: the predicted scores keep their order
            assert got.metrics["pearson"] == pytest.approx(1.0)
            assert [round(p) for p in (it["pred"] for it in got.items)] == [5, 1]
            continue
        assert got.metrics == pytest.approx(score_metrics(key, records, [r.label for r in records])), key

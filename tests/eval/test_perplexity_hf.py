"""Acceptance: our perplexity equals the Hugging Face guide's loop on the same weights exported to HF."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from scratchlm import checkpoint
from scratchlm import tokenizer as tokenizers
from scratchlm.cli.main import main
from scratchlm.model import GPT, ModelConfig

transformers = pytest.importorskip("transformers")


def hf_guide_perplexity(model, input_ids: torch.Tensor, max_length: int, stride: int, exact: bool = True
                        ) -> tuple[float, int]:
    """The loop of https://huggingface.co/docs/transformers/perplexity.

    `exact=False` is the guide verbatim: it multiplies each window's mean loss by `valid - 1` tokens, but after
    the first window all `trg_len` targets have a token before them inside the window and are scored, so with
    overlapping windows the guide weights the windows' means by one token too few. `exact=True` counts the
    tokens HF's loss actually averaged over (the shifted labels), which is each token once.
    """
    seq_len = input_ids.size(1)
    nll_sum, n_tokens, prev_end_loc = 0.0, 0, 0
    for begin_loc in range(0, seq_len, stride):
        end_loc = min(begin_loc + max_length, seq_len)
        trg_len = end_loc - prev_end_loc
        ids = input_ids[:, begin_loc:end_loc]
        target_ids = ids.clone()
        target_ids[:, :-trg_len] = -100
        with torch.no_grad():
            outputs = model(ids, labels=target_ids)
        if exact:
            num_loss_tokens = (target_ids[:, 1:] != -100).sum().item()  # the labels HF's loss averaged over
        else:
            num_valid_tokens = (target_ids != -100).sum().item()
            num_loss_tokens = num_valid_tokens - target_ids.size(0)  # "subtract batch_size due to label shift"
        nll_sum += outputs.loss.double().item() * num_loss_tokens
        n_tokens += num_loss_tokens
        prev_end_loc = end_loc
        if end_loc == seq_len:
            break
    return nll_sum, n_tokens


MIRROR = Path(os.environ.get("SCRATCHLM_MIRROR") or Path(__file__).resolve().parents[2] / ".." / "shared" / "data")


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, object, torch.Tensor, str]]:
    with pytest.MonkeyPatch.context() as mp:  # module scope: the per-test mirror setting is not there yet
        mp.setenv("SCRATCHLM_MIRROR", str(MIRROR.resolve()))
        mp.setenv("SCRATCHLM_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield _export(tmp_path_factory.mktemp("hf"))


def _export(tmp: Path) -> tuple[Path, object, torch.Tensor, str]:
    torch.manual_seed(0)
    config = ModelConfig.from_preset("gpt2-tiny").replace(context_length=64, d_model=32, n_head=2, n_kv_head=2, d_ff=128)
    model = GPT(config)
    with torch.no_grad():  # larger than init so that predictions depend on the context
        for p in model.blocks.parameters():
            p.mul_(8)
    ckpt = checkpoint.save(tmp / "ckpt", model, tokenizers.load("gpt2"))
    hf_dir = tmp / "hf"
    assert main(["convert", "to-hf", str(ckpt), str(hf_dir)]) == 0
    text = (MIRROR / "wikitext-2-test.tokens").read_text(encoding="utf-8")[:2500]
    (tmp / "text.txt").write_text(text, encoding="utf-8")
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir).eval()
    input_ids = transformers.AutoTokenizer.from_pretrained(hf_dir)(text, return_tensors="pt").input_ids  # (1, N)
    return ckpt, hf_model, input_ids, text


@pytest.mark.parametrize("context,stride", [(64, 64), (64, 32)])
def test_equals_the_hf_guide(exported, context: int, stride: int, capsys: pytest.CaptureFixture[str]) -> None:
    ckpt, hf_model, input_ids, text = exported
    nll, n = hf_guide_perplexity(hf_model, input_ids, context, stride)
    if stride == context:  # disjoint windows: the guide verbatim counts the same tokens
        assert hf_guide_perplexity(hf_model, input_ids, context, stride, exact=False) == pytest.approx((nll, n))
    ref_ppl = float(torch.tensor(nll / n).exp())

    argv = ["eval", "perplexity", "--checkpoint", str(ckpt), "--input", str(ckpt.parent / "text.txt"),
            "--context", str(context), "--stride", str(stride), "--batch-size", "3", "--json", "--no-progress"]
    assert main(argv) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["tokens"] == n and got["total_tokens"] == input_ids.size(1)
    assert abs(got["token_perplexity"] - ref_ppl) / ref_ppl <= 1e-4
    assert abs(got["nll"] - nll) / nll <= 1e-4
    # the text-level metrics divide the same loss by properties of the raw text
    words, n_bytes = len(text.split()), len(text.encode("utf-8"))
    assert got["word_perplexity"] == pytest.approx(float(torch.tensor(nll / words).exp()), rel=1e-4)
    assert got["bits_per_byte"] == pytest.approx(nll / torch.log(torch.tensor(2.0)).item() / n_bytes, rel=1e-4)
    assert ref_ppl > 1.5  # a non-trivial model: windows and context matter

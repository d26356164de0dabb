"""`--int8` on the commands a user types: generate prints the quantized model's text, serve answers with it, and
eval perplexity scores it (within 1% of float on this model)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import scratchlm
from scratchlm.cli.main import main
from scratchlm.generate import SampleConfig, complete
from scratchlm.model.quant import quantize_int8


def test_generate_serve_and_perplexity_take_int8(
    tiny_checkpoint: Path,
    tmp_path: Path,
    serve_process,  # noqa: ANN001
    capsys: pytest.CaptureFixture[str],
) -> None:
    model, tok = scratchlm.load(tiny_checkpoint)
    quantize_int8(model)
    cfg = SampleConfig(temperature=0.0, max_new_tokens=12, ignore_eos=True)
    [[ref]] = complete(model, tok, ["To be or not"], cfg)
    flags = ["--temperature", "0", "--max-new-tokens", "12", "--ignore-eos"]
    assert (
        main(["generate", "--checkpoint", str(tiny_checkpoint), "--prompt", "To be or not", *flags, "--int8"])
        == 0
    )
    assert capsys.readouterr().out == ref.text + "\n"

    import openai

    with serve_process(
        ["--checkpoint", str(tiny_checkpoint), "--int8", "--slots", "1", "--max-len", "64"]
    ) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused")
        r = client.completions.create(
            model=tiny_checkpoint.name,
            prompt="To be or not",
            max_tokens=12,
            temperature=0,
            extra_body={"ignore_eos": True},
        )
    assert r.choices[0].text == ref.text

    text = tmp_path / "t.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. " * 20)
    ppl = {}
    for extra in ([], ["--int8"]):
        args = [
            "eval",
            "perplexity",
            "--checkpoint",
            str(tiny_checkpoint),
            "--input",
            str(text),
            "--json",
            *extra,
        ]
        assert main(args) == 0
        ppl[bool(extra)] = json.loads(capsys.readouterr().out)["token_perplexity"]
    assert ppl[True] != ppl[False] and abs(ppl[True] / ppl[False] - 1) < 0.01, ppl

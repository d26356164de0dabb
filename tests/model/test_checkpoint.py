"""The checkpoint folder: save/load round trip, run folders, train state, and one-line errors (CLI too)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

import scratchlm
from scratchlm import checkpoint
from scratchlm.cli.main import main
from scratchlm.errors import ScratchlmError
from scratchlm.model import GPT, ModelConfig


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    from scratchlm.tokenizer import GPT2_PATTERN, BPETokenizer

    return BPETokenizer([bytes([i]) for i in range(256)], {"<|endoftext|>": 256}, GPT2_PATTERN, name="bytes")


def _model(preset: str = "gpt2-tiny", **kw) -> GPT:
    torch.manual_seed(0)
    return GPT(ModelConfig.from_preset(preset, vocab_size=300, context_length=32, **kw))


class _Wrapper(torch.nn.Module):  # stands in for DDP: parameters under "module."
    def __init__(self, module: torch.nn.Module) -> None:
        super().__init__()
        self.module = module


@pytest.mark.parametrize("preset", ["gpt2-tiny", "llama-tiny"])
def test_save_load_round_trip(preset, tok, tmp_path) -> None:
    model = _model(preset)
    path = checkpoint.save(tmp_path / "step_000001", _Wrapper(model), tok, extra={"train": {"lr": 0.1}})
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "model.safetensors", "tokenizer.json"]
    config = json.loads((path / "config.json").read_text())
    assert config["format_version"] == 1 and config["scratchlm_version"] == scratchlm.__version__
    assert config["train"] == {"lr": 0.1}
    keys = load_file(path / "model.safetensors").keys()
    assert all(not k.startswith("module.") for k in keys)
    assert ("lm_head.weight" in keys) == (not model.config.tie_embeddings)  # tied weights stored once
    loaded, tok2 = scratchlm.load(path)
    assert tok2.identity() == tok.identity()
    assert not loaded.training
    if model.config.tie_embeddings:
        assert loaded.lm_head.weight is loaded.tok_emb.weight
    ids = torch.randint(0, 300, (2, 9))
    with torch.no_grad():
        assert torch.equal(loaded(ids), model.eval()(ids))


def test_run_folder_latest_and_train_state(tok, tmp_path) -> None:
    model = _model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randint(0, 300, (1, 4))).sum().backward()
    opt.step()
    state = checkpoint.TrainState.from_nested({"optimizer": opt.state_dict(), "step": 7, "rng": [1, 2]})
    checkpoint.save_step(tmp_path / "run", 5, model, tok)
    step = checkpoint.save_step(tmp_path / "run", 7, model, tok, train_state=state)
    assert (tmp_path / "run" / "latest").read_text().strip() == "step_000007"
    assert checkpoint.resolve(tmp_path / "run") == step
    back = checkpoint.load_train_state(tmp_path / "run").to_nested()
    assert back["step"] == 7 and back["rng"] == [1, 2]
    opt2 = torch.optim.AdamW(_model().parameters(), lr=1e-3)
    opt2.load_state_dict(back["optimizer"])  # int parameter keys survive JSON
    for k, st in opt.state_dict()["state"].items():
        assert torch.equal(opt2.state_dict()["state"][k]["exp_avg_sq"], st["exp_avg_sq"])
    assert checkpoint.load_train_state(tmp_path / "run" / "step_000005") is None


def test_load_errors_are_one_line(tok, tmp_path) -> None:
    path = checkpoint.save(tmp_path / "c", _model(), tok)
    cfg = json.loads((path / "config.json").read_text())

    def broken(**model_fields) -> str:
        (path / "config.json").write_text(json.dumps({**cfg, "model": {**cfg["model"], **model_fields}}))
        with pytest.raises(ScratchlmError) as e:
            checkpoint.load(path)
        assert "\n" not in str(e.value)
        return str(e.value)

    assert "fc_in.weight has shape [256, 64] but the config implies [128, 64]" in broken(d_ff=128)
    assert "missing blocks.2." in broken(n_layer=3)
    assert "missing lm_head.weight" in broken(tie_embeddings=False)
    assert "tokenizer has 257 tokens but the model only 100 embedding rows" in broken(vocab_size=100)
    (path / "config.json").write_text(json.dumps({**cfg, "format_version": 99}))
    with pytest.raises(ScratchlmError, match="format_version 99; this scratchlm reads version 1"):
        checkpoint.load(path)
    with pytest.raises(ScratchlmError, match="does not exist"):
        checkpoint.load(tmp_path / "nope")
    with pytest.raises(ScratchlmError, match="model only 100 embedding rows"):
        checkpoint.save(tmp_path / "d", GPT(ModelConfig.from_preset("gpt2-tiny", vocab_size=100)), tok)
    assert not (tmp_path / "d").exists() and not (tmp_path / "d.tmp").exists()


# ---- bad input through the CLI (acceptance 7): exit 2, one line, no partial output --------------------------------
def _cli(capsys, *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    err = capsys.readouterr().err
    return code, err


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("n_head=5", "error: model n_head=5 does not divide d_model=768; choose n_head among the divisors of d_model"),
        ("n_kv_head=5", "error: model n_kv_head=5 does not divide n_head=12; choose n_kv_head among the divisors"),
    ],
)
def test_cli_bad_config(capsys, override, message) -> None:
    code, err = _cli(capsys, "model", "info", "--preset", "gpt2", "--set", override)
    assert code == 2 and err.startswith(message) and err.count("\n") == 1


def test_cli_unsupported_hf_architecture(capsys, tmp_path) -> None:
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text(json.dumps({"architectures": ["BertForMaskedLM"]}))
    code, err = _cli(capsys, "convert", "from-hf", str(tmp_path / "bert"), str(tmp_path / "out"))
    assert (code, err) == (2, "error: Hugging Face architecture BertForMaskedLM is not supported; scratchlm "
                              "converts GPT2LMHeadModel, LlamaForCausalLM, MistralForCausalLM folders\n")
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.tmp").exists()


def test_cli_checkpoint_weights_do_not_match_config(capsys, tok, tmp_path) -> None:
    path = checkpoint.save(tmp_path / "c", _model("llama-tiny"), tok)
    cfg = json.loads((path / "config.json").read_text())
    cfg["model"]["n_kv_head"] = 4
    (path / "config.json").write_text(json.dumps(cfg))
    code, err = _cli(capsys, "convert", "to-hf", str(path), str(tmp_path / "hf"))
    assert code == 2 and err.count("\n") == 1
    assert "the weights do not match config.json: blocks.0.attn.k_proj.weight has shape [32, 64]" in err
    assert not (tmp_path / "hf").exists() and not (tmp_path / "hf.tmp").exists()


def test_cli_model_info_gpt2(capsys) -> None:
    assert main(["model", "info", "--preset", "gpt2"]) == 0
    out = capsys.readouterr().out
    assert "124,439,808" in out and "85,056,000" in out


def test_cli_model_info_checkpoint_and_convert(capsys, tok, tmp_path) -> None:
    path = checkpoint.save(tmp_path / "c", _model("llama-tiny"), tok)
    assert main(["model", "info", "--checkpoint", str(path), "--batch", "2", "--context", "16"]) == 0
    assert f"{_model('llama-tiny').num_params():,}" in capsys.readouterr().out
    assert main(["convert", "to-hf", str(path), str(tmp_path / "hf")]) == 0
    assert "no Hugging Face tokenizer files were written" in capsys.readouterr().out
    assert main(["convert", "from-hf", str(tmp_path / "hf"), str(tmp_path / "back")]) == 0
    assert torch.equal(load_file(tmp_path / "back" / "model.safetensors")["tok_emb.weight"],
                       load_file(path / "model.safetensors")["tok_emb.weight"])

"""ModelConfig: `replace` re-derives derived fields, range checks, and the refusal of a model that cannot fit."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import yaml

from scratchlm.cli.main import main
from scratchlm.data import prepare_text
from scratchlm.errors import ConfigError
from scratchlm.model import GPT, ModelConfig, sizing


def test_replace_n_head_of_multi_head_attention_stays_multi_head() -> None:
    gpt2 = ModelConfig.from_preset("gpt2")
    wider = gpt2.replace(n_head=24)
    assert (wider.n_head, wider.n_kv_head, wider.n_rep) == (24, 24, 1)
    assert gpt2.replace(n_head=8, d_model=512).n_kv_head == 8


def test_replace_keeps_an_explicit_grouped_query_n_kv_head() -> None:
    llama = ModelConfig.from_preset("tinyllama-1.1b")  # 32 heads, 4 KV heads
    assert llama.replace(n_head=16).n_kv_head == 4
    assert llama.replace(n_head=16, n_kv_head=16).n_kv_head == 16  # named: taken as given


def test_replace_d_model_re_derives_d_ff_unless_it_was_set() -> None:
    gpt2 = ModelConfig.from_preset("gpt2")  # d_ff 3072 = 4 x 768
    assert gpt2.replace(d_model=1024, n_head=16).d_ff == 4096
    assert gpt2.replace(d_model=1024, n_head=16, d_ff=1000).d_ff == 1000
    llama = ModelConfig.from_preset("tinyllama-1.1b")  # d_ff 5632, not 4 x 2048: kept
    assert llama.replace(d_model=1024).d_ff == 5632
    assert ModelConfig(d_model=64, n_head=4, d_ff=100).replace(d_model=128).d_ff == 100


def test_replace_without_changes_and_from_preset_overrides() -> None:
    config = ModelConfig.from_preset("llama-tiny")
    assert config.replace() == config
    assert ModelConfig.from_preset("gpt2-tiny", d_model=128).d_ff == 512  # the preset's d_ff 256 = 4 x 64
    assert ModelConfig.from_preset("gpt2-tiny", n_head=8).n_kv_head == 8
    with pytest.raises(ConfigError, match=r"^model config: unknown key\(s\) n_haed for ModelConfig; known"):
        config.replace(n_haed=8)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"n_layer": True}, "model n_layer must be a positive integer, got True"),
        ({"vocab_size": 1e4}, "model vocab_size must be a positive integer, got 10000.0"),
        ({"d_model": -64}, "model d_model must be a positive integer, got -64"),
        ({"d_ff": 0}, "model d_ff must be a positive integer, got 0"),
        (
            {"rope_original_context_length": 0},
            "model rope_original_context_length must be a positive integer, got 0",
        ),
        ({"norm_eps": 0.0}, "model norm_eps must be a positive number, got 0.0"),
        ({"rope_theta": -1.0}, "model rope_theta must be a positive number, got -1.0"),
        ({"rope_theta": math.inf}, "model rope_theta must be a positive number, got inf"),
        ({"dropout": math.nan}, "model dropout must be in [0, 1), got nan"),
        ({"bias": "false"}, "model bias must be true or false, got 'false'"),
        (
            {"rope_scaling_factor": 8.0, "rope_low_freq_factor": 4.0, "rope_high_freq_factor": 4.0},
            "model rope_high_freq_factor=4.0 must exceed rope_low_freq_factor=4.0",
        ),
    ],
)
def test_range_checks_name_the_field(fields: dict, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        ModelConfig(**{"d_model": 64, "n_head": 4, **fields})
    assert str(err.value) == message


def test_check_fits_in_memory_message() -> None:
    config = ModelConfig(vocab_size=10_000_000_000, d_model=64, n_head=4, n_layer=2, context_length=256)
    n = sizing.param_counts(config).total
    assert n == 640_000_116_480
    with pytest.raises(ConfigError) as err:
        sizing.check_fits_in_memory(config, 4, available=8 * 2**30)
    assert str(err.value) == (
        "model has 640,000,116,480 parameters, 2.3 TiB at 4 bytes each, but this machine has 8.0 GiB of memory "
        "available; choose a smaller model (vocab_size, d_model, d_ff, n_layer)"
    )
    sizing.check_fits_in_memory(config, 4, available=4 * n)  # exactly enough: allowed


def test_available_memory_is_a_plausible_figure() -> None:
    available = sizing.available_memory_bytes()
    assert available is not None and 2**26 < available < 2**50  # between 64 MiB and 1 PiB


def test_gpt_refuses_a_model_bigger_than_ram_but_meta_builds_it() -> None:
    config = ModelConfig.from_preset("gpt2-tiny", vocab_size=10_000_000_000)
    with pytest.raises(
        ConfigError, match=r"^model has 640,000,116,480 parameters, 2.3 TiB at 4 bytes each, but"
    ):
        GPT(config)
    with torch.device("meta"):  # checkpoint loading and sizing allocate nothing: no refusal
        assert GPT(config).num_params() == 640_000_116_480


def test_cli_pretrain_refuses_a_huge_vocab_in_one_line(
    tmp_path: Path, mirror: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    prepare_text((mirror / "tinyshakespeare.txt").read_text()[:20_000], tmp_path / "shards", tokenizer="char")
    out = tmp_path / "run"
    code = main(
        ["pretrain", "--preset", "shakespeare-char", "--data", str(tmp_path / "shards"), "--out", str(out),
         "--model.vocab-size", "10000000000", "--no-progress"]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert err.startswith("error: model has 1,280,000,791,680 parameters, 4.7 TiB at 4 bytes each"), err
    assert "of memory available; choose a smaller model (vocab_size, d_model, d_ff, n_layer)" in err
    assert not out.exists()


def test_cli_model_info_still_sizes_a_model_too_big_to_build(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["model", "info", "--preset", "gpt2-tiny", "--set", "vocab_size=10000000000"]) == 0
    assert "parameters                   640,000,116,480 (640.00 G)\n" in capsys.readouterr().out


def test_cli_model_info_set_re_derives_d_ff(capsys: pytest.CaptureFixture[str]) -> None:
    """docs/model.md's example: gpt2 with GPT-2 medium's depth and width is GPT-2 medium (d_ff 4096)."""
    assert (
        main(["model", "info", "--preset", "gpt2", "--set", "n_layer=24", "d_model=1024", "n_head=16"]) == 0
    )
    out = capsys.readouterr().out
    assert "24 layers, d_model 1024, 16 heads, d_ff 4096," in out
    assert "parameters                    354,823,168 (354.82 M)\n" in out  # HF gpt2-medium, tied


def test_cli_pretrain_model_overrides_re_derive_d_ff_and_n_kv_head(
    tmp_path: Path, mirror: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    prepare_text((mirror / "tinyshakespeare.txt").read_text()[:20_000], tmp_path / "shards", tokenizer="char")
    out = tmp_path / "run"
    code = main(
        ["pretrain", "--preset", "shakespeare-char", "--data", str(tmp_path / "shards"), "--out", str(out),
         "--model-preset", "gpt2-tiny", "--model.vocab-size", "65", "--model.context-length", "16",
         "--model.d-model", "32", "--model.n-head", "2", "--max-steps", "1", "--micro-batch-size", "2",
         "--eval-batches", "1", "--warmup-steps", "1", "--sample-at-end", "0", "--no-progress"]
    )  # fmt: skip
    assert code == 0, capsys.readouterr().err
    model = yaml.safe_load((out / "config.yaml").read_text())["model"]
    assert (model["d_ff"], model["n_kv_head"]) == (128, 2)  # gpt2-tiny's d_ff 256 = 4 x 64 follows d_model

"""The command table: help everywhere, config files, flag spellings, errors as one line with exit 2."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from scratchlm.cli.main import COMMANDS, main
from scratchlm.cli.parsing import parse
from scratchlm.errors import ConfigError, ScratchlmError


def test_top_level_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert name in out


def test_python_dash_m_runs_the_cli() -> None:
    r = subprocess.run([sys.executable, "-m", "scratchlm", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "tokenizer train" in r.stdout


def test_unknown_command_is_one_line_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["frobnicate"]) == 2
    assert capsys.readouterr().err.count("\n") == 1


@dataclass
class _Checked:
    n: int = 1
    """Must be positive."""

    def __post_init__(self) -> None:
        if self.n <= 0:
            raise ConfigError(f"n must be positive, got {self.n}; pass --n 1 or more")


def test_config_error_from_post_init_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ConfigError, match="n must be positive, got 0"):
        parse(_Checked, ["--n", "0"], prog="t")
    assert main(["tokenizer", "train", "--input", "x.txt", "--vocab-size", "100", "--out", "t.json"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1


@dataclass
class _Inner:
    n_layer: int = 4
    """Layers."""


@dataclass
class _Cfg:
    max_steps: int = 10
    """Steps."""
    mask_prompt: bool = True
    """Mask."""
    lr: float = 1e-3
    """LR."""
    model: _Inner = field(default_factory=_Inner)


def test_flags_yaml_and_overrides(tmp_path: Path) -> None:
    cfg_file = tmp_path / "run.yaml"
    cfg_file.write_text("max_steps: 7\nlr: 1\nmodel:\n  n_layer: 2\n")
    cfg = parse(_Cfg, ["--config", str(cfg_file), "--mask-prompt", "false"], prog="t")
    assert cfg == _Cfg(max_steps=7, mask_prompt=False, lr=1.0, model=_Inner(2))
    cfg = parse(_Cfg, ["--config", str(cfg_file), "--max-steps", "3", "--model.n-layer", "5"], prog="t")
    assert (cfg.max_steps, cfg.model.n_layer) == (3, 5)
    assert parse(_Cfg, ["--no-mask-prompt"], prog="t").mask_prompt is False
    assert parse(_Cfg, ["--mask_prompt"], prog="t").mask_prompt is True


def test_yaml_unknown_key_names_the_known_ones(tmp_path: Path) -> None:
    cfg_file = tmp_path / "run.yaml"
    cfg_file.write_text("max_stepz: 7\n")
    with pytest.raises(ScratchlmError, match="unknown key.*max_stepz.*known keys: max_steps"):
        parse(_Cfg, ["--config", str(cfg_file)], prog="t")


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_has_help(name: str) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "scratchlm", *name.split(), "--help"], capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stderr
    assert "usage:" in r.stdout and "--config" in r.stdout


@pytest.mark.parametrize(
    "argv, message",
    [
        (["generate", "--checkpoint", "x", "--seed", "1e23"],
         "error: --seed takes an integer (or None), got '1e23'; see `scratchlm generate --help`"),
        (["generate", "--checkpoint", "x", "--temperature=hot"],
         "error: --temperature takes a number, got 'hot'; see `scratchlm generate --help`"),
        (["pretrain", "--model.vocab-size", "lots"],
         "error: --model.vocab-size takes an integer (or None), got 'lots'; see `scratchlm pretrain --help`"),
        (["generate", "--checkpoint", "x", "--frobnicate", "3"],
         "error: unrecognized options: --frobnicate, 3; see `scratchlm generate --help`"),
        (["serve"], "error: missing required --checkpoint PATH; see `scratchlm serve --help`"),
    ],
)
def test_a_flag_tyro_cannot_parse_is_one_line_exit_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    assert capsys.readouterr().err == message + "\n"  # not tyro's multi-line box

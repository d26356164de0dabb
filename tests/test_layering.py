"""The import rules of the package map (README, design): each package in a fresh interpreter."""

from __future__ import annotations

import subprocess
import sys

import pytest

# package -> modules that must not be loaded by importing it
FORBIDDEN = {
    "scratchlm": ["torch", "scratchlm.cli"],
    "scratchlm.assets": ["torch", "scratchlm.cli"],
    "scratchlm.tokenizer": ["torch", "numpy", "scratchlm.model", "scratchlm.data", "scratchlm.cli"],
    "scratchlm.model": ["scratchlm.tokenizer", "scratchlm.data", "scratchlm.checkpoint", "scratchlm.train",
                        "scratchlm.generate", "scratchlm.cli"],
    "scratchlm.data": ["scratchlm.model", "scratchlm.train", "scratchlm.cli"],
    "scratchlm.checkpoint": ["scratchlm.train", "scratchlm.data", "scratchlm.cli"],
    "scratchlm.train": ["scratchlm.serve", "scratchlm.cli"],
    "scratchlm.generate": ["scratchlm.data", "scratchlm.train", "scratchlm.cli"],
    "scratchlm.eval": ["scratchlm.train", "scratchlm.cli"],
    "scratchlm.serve": ["scratchlm.train", "scratchlm.data", "scratchlm.cli"],
}


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_import_rules(package: str) -> None:
    code = (
        f"import sys, importlib; importlib.import_module({package!r}); "
        f"print(','.join(m for m in {FORBIDDEN[package]!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "", f"importing {package} loaded {out}"

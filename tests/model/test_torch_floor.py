"""The declared torch floor is the newest version among the torch APIs src/ calls (and docs/model.md lists them)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# pattern in src/ -> (the API as docs/model.md names it, the first torch release that has it)
APIS = {
    r"enable_gqa=": ("F.scaled_dot_product_attention(enable_gqa=...)", (2, 5)),
    r"torch\.is_autocast_enabled\(\"": ("torch.is_autocast_enabled(device_type)", (2, 4)),
    r"torch\.get_default_device\(\)": ("torch.get_default_device()", (2, 3)),
    r"torch\.compiler\.is_compiling\(\)": ("torch.compiler.is_compiling()", (2, 3)),
    r"torch\.amp\.GradScaler\(": ("torch.amp.GradScaler(device)", (2, 3)),
    r"LayerNorm\([^)]*bias=": ("nn.LayerNorm(bias=...)", (2, 1)),
    r"register_flop_formula": ("torch.utils.flop_counter.register_flop_formula", (2, 1)),
    r"assign=True\)": ("load_state_dict(assign=True)", (2, 1)),
}


def test_torch_floor_is_the_newest_api_used_and_documented() -> None:
    source = "\n".join(p.read_text() for p in (ROOT / "src").rglob("*.py"))
    used = {name: version for pattern, (name, version) in APIS.items() if re.search(pattern, source)}
    assert "F.scaled_dot_product_attention(enable_gqa=...)" in used
    floor = re.search(r'"torch>=(\d+)\.(\d+)', (ROOT / "pyproject.toml").read_text())
    assert floor is not None
    assert (int(floor[1]), int(floor[2])) == max(used.values())
    docs = (ROOT / "docs" / "model.md").read_text()
    for name, (major, minor) in used.items():
        assert f"| `{name}` | {major}.{minor} |" in docs, name
    assert "CI tests torch 2.13.0 only" in docs

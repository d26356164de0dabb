"""CUDA: the compiled decode step, plain and as CUDA graphs ("reduce-overhead"), gives the eager engine's tokens
token for token (fp32, both families, greedy and sampled, continuous batching). Marked `gpu`."""

from __future__ import annotations

import pytest
import torch

from scratchlm.generate import SampleConfig
from scratchlm.generate.engine import Engine, make_sequences

pytestmark = pytest.mark.gpu

PROMPTS = [[1, 2, 3], [5, 6, 7, 8, 9, 10], [42], [7] * 20, [9, 8], [60, 61, 62, 63]]


def _run(model: torch.nn.Module, config: SampleConfig, compile: bool | str) -> list[list[int]]:
    engine = Engine(model, slots=3, max_len=64, compile=compile)  # 6 sequences through 3 slots
    flat = [s for g in make_sequences(PROMPTS, config) for s in g]
    for _ in engine.run(flat):
        pass
    return [s.output for s in flat]


@pytest.mark.parametrize("family", ["gpt2", "llama"])
@pytest.mark.parametrize("mode", [True, "reduce-overhead"])
def test_compiled_decode_on_cuda_equals_eager(tiny_gpt, family: str, mode: bool | str) -> None:  # noqa: ANN001
    model = tiny_gpt(family).to("cuda")
    torch._dynamo.reset()
    for config in (
        SampleConfig(temperature=0.0, max_new_tokens=30),
        SampleConfig(temperature=1.0, top_k=20, seed=3, max_new_tokens=25),
    ):
        eager = _run(model, config, compile=False)
        assert len({t for out in eager for t in out}) > 20
        assert _run(model, config, compile=mode) == eager

"""Weight-only int8 (`scratchlm.model.quant`): the layer equals its dequantized weight's product, stays close to
the float layer, shrinks the weights 4x, and `--int8` reaches generate, serve and eval."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from scratchlm.model import GPT, ModelConfig
from scratchlm.model.quant import Int8Linear, quantize_int8


def test_int8_linear_is_its_dequantized_weights_product_and_close_to_float() -> None:
    torch.manual_seed(0)
    lin = nn.Linear(96, 40)
    q = Int8Linear.from_linear(lin)
    assert q.weight.dtype == torch.int8 and q.scale.shape == (40,)
    assert int(q.weight.abs().max()) == 127  # every row's largest weight lands on the grid's end
    x = torch.randn(3, 5, 96)
    ref = x @ q.dequantize().t() + lin.bias
    torch.testing.assert_close(q(x), ref, rtol=1e-5, atol=1e-5)
    # per-row rounding error is at most half a step: scale / 2 per weight
    assert float((q.dequantize() - lin.weight.detach()).abs().max()) <= float(q.scale.max()) / 2 + 1e-7
    with torch.no_grad():
        rel = (q(x) - lin(x)).norm() / lin(x).norm()
    assert float(rel) < 1e-2
    with torch.autocast("cpu", dtype=torch.bfloat16):  # bf16 activations, as generation under autocast
        assert q(x).dtype == torch.bfloat16


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_quantized_model_keeps_its_predictions(family: str) -> None:
    extra = (
        {"norm": "rmsnorm", "mlp": "swiglu", "positions": "rope", "bias": False} if family == "llama" else {}
    )
    cfg = ModelConfig(vocab_size=128, context_length=32, n_layer=2, n_head=2, d_model=64, **extra)
    torch.manual_seed(0)
    model = GPT(cfg).eval()
    ids = torch.randint(0, 128, (2, 32))
    with torch.no_grad():
        ref = model(ids)
        ref_nll = model(ids[:, :-1], targets=ids[:, 1:], reduction="mean")
        float_bytes = sum(m.weight.numel() * 4 for m in model.modules() if isinstance(m, nn.Linear))
        n = quantize_int8(model)
        got = model(ids)
        got_nll = model(
            ids[:, :-1], targets=ids[:, 1:], reduction="mean"
        )  # the chunked loss on the int8 head
    assert (
        n == 2 * (4 + (3 if family == "llama" else 2)) + 1
    )  # q, k, v, o + the MLP's, per block, and the head
    int8_bytes = sum(m.weight.numel() for m in model.modules() if isinstance(m, Int8Linear))
    assert int8_bytes * 4 == float_bytes
    assert float((got - ref).norm() / ref.norm()) < 2e-2
    assert math.isclose(float(got_nll), float(ref_nll), rel_tol=1e-2)
    torch.testing.assert_close(
        got_nll,
        torch.nn.functional.cross_entropy(got[:, :-1].flatten(0, 1), ids[:, 1:].flatten()),
        rtol=1e-5,
        atol=1e-5,
    )

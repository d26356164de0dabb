"""The oneDNN linear path (model/onednn.py) against F.linear: double backward, torch.func, DTensor, the switch,
the self-check. Each asserts values and which GEMM op dispatched."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from scratchlm.errors import ConfigError
from scratchlm.model import layers, onednn

pytestmark = pytest.mark.skipif(not onednn.AVAILABLE, reason="this torch build has no oneDNN linear op")
ONEDNN_OP = "mkldnn._linear_pointwise"


@pytest.fixture(autouse=True)
def _restore_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests flip the process-wide switch; put it back afterwards (monkeypatch restores the module state)."""
    for name in ("_switch", "_works", "_fast"):
        monkeypatch.setattr(onednn, name, getattr(onednn, name))


def _ops(counter: FlopCounterMode) -> set[str]:
    return {str(op) for op in counter.get_flop_counts()["Global"]}


def _xwb(
    bias: bool = True, requires_grad: bool = True
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, 12, generator=g)
    w = torch.randn(7, 12, generator=g) / 4
    b = torch.randn(7, generator=g) if bias else None
    return tuple(t.requires_grad_(requires_grad) if t is not None else None for t in (x, w, b))  # type: ignore[return-value]


@pytest.mark.parametrize("bias", [True, False])
def test_double_backward_equals_f_linear(bias: bool) -> None:
    """Second derivatives (gradient penalties, Hessian-vector products) through both x and the weight."""

    def second_order(fn) -> list[torch.Tensor]:
        x, w, b = _xwb(bias)
        params = [t for t in (x, w, b) if t is not None]
        y = fn(x, w, b)
        loss = (y.tanh() * torch.linspace(-1, 1, 7)).sum()
        gx, gw = torch.autograd.grad(loss, (x, w), create_graph=True)
        penalty = (gx**2).sum() + (gw**2).sum() + (gx.sum(-1) * y[..., 0]).sum()
        return list(torch.autograd.grad(penalty, params))

    want = second_order(F.linear)
    with FlopCounterMode(display=False) as counter:
        got = second_order(onednn.linear)
    # every product of a graph, second order too, stays on the fast path; the weight gradients of the last,
    # graphless backward are BLAS's mm (which reads both transposed operands in place)
    assert _ops(counter) == {ONEDNN_OP, "aten.mm"}
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)


def test_plain_backward_records_no_graph_of_the_backward() -> None:
    """Without create_graph the gradients are bare GEMMs: nothing of the backward is recorded."""
    x, w, b = _xwb()
    gx, gw = torch.autograd.grad(onednn.linear(x, w, b).sum(), (x, w))
    assert gx.grad_fn is None and gw.grad_fn is None
    ref = torch.autograd.grad(F.linear(x, w, b).sum(), (x, w))
    torch.testing.assert_close(gx, ref[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gw, ref[1], rtol=1e-5, atol=1e-5)


def test_torch_func_grad_vmap_jvp_hessian_equal_f_linear() -> None:
    x, w, b = _xwb(requires_grad=False)
    tangent = torch.ones_like(x)
    fn = layers.linear  # what every layer calls
    with FlopCounterMode(display=False) as counter:
        grad_w = torch.func.grad(lambda w_: fn(x, w_, b).pow(2).sum())(w)
        batched = torch.func.vmap(fn, in_dims=(0, None, None))(x, w, b)
        _, jvp_out = torch.func.jvp(lambda x_: fn(x_, w, b), (x,), (tangent,))
        hess = torch.func.hessian(lambda b_: fn(x, w, b_).tanh().sum())(b)
    assert _ops(counter) and ONEDNN_OP not in _ops(counter)  # F.linear under the transforms
    want_grad_w = torch.func.grad(lambda w_: F.linear(x, w_, b).pow(2).sum())(w)
    torch.testing.assert_close(grad_w, want_grad_w, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(batched, F.linear(x, w, b), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(jvp_out, F.linear(tangent, w), rtol=1e-5, atol=1e-6)
    want_hess = torch.func.hessian(lambda b_: F.linear(x, w, b_).tanh().sum())(b)
    torch.testing.assert_close(hess, want_hess, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("requires_grad", [False, True])
def test_forward_mode_ad_keeps_the_tangent(requires_grad: bool) -> None:
    import torch.autograd.forward_ad as fwAD

    x, w, b = _xwb(requires_grad=False)
    tangent = torch.linspace(-1, 1, x.numel()).reshape(x.shape)
    with fwAD.dual_level():
        y = onednn.linear(fwAD.make_dual(x.clone().requires_grad_(requires_grad), tangent), w, b)
        primal, tan = fwAD.unpack_dual(y)
    torch.testing.assert_close(primal, F.linear(x, w, b), rtol=1e-5, atol=1e-6)
    assert tan is not None
    torch.testing.assert_close(tan, F.linear(tangent, w), rtol=1e-5, atol=1e-6)


@pytest.fixture
def one_process_mesh():
    """A 1-process gloo group on CPU (in-memory store: no ports, no files) and its DeviceMesh."""
    dist = pytest.importorskip("torch.distributed")
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    from torch.distributed.device_mesh import init_device_mesh

    dist.init_process_group("gloo", store=dist.HashStore(), world_size=1, rank=0)
    try:
        yield init_device_mesh("cpu", (1,))
    finally:
        dist.destroy_process_group()


def test_dtensor_inputs_fall_back_to_f_linear(one_process_mesh) -> None:
    from torch.distributed.tensor import DTensor, Replicate, distribute_module, distribute_tensor

    torch.manual_seed(0)
    layer = layers.Linear(12, 7)
    x = torch.randn(2, 5, 12)
    want = F.linear(x, layer.weight, layer.bias)
    want.sum().backward()
    want_grad = layer.weight.grad.clone()
    layer.zero_grad()

    distribute_module(layer, one_process_mesh)  # parameters become replicated DTensors
    xd = distribute_tensor(x, one_process_mesh, [Replicate()])
    with FlopCounterMode(display=False) as counter:
        y = layer(xd)
        y.sum().backward()
    assert isinstance(y, DTensor) and ONEDNN_OP not in _ops(counter)
    torch.testing.assert_close(y.full_tensor(), want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(layer.weight.grad.full_tensor(), want_grad, rtol=1e-5, atol=1e-5)


def test_set_enabled_switches_the_path() -> None:
    x, w, b = _xwb()
    onednn.set_enabled(False)
    assert not onednn.is_enabled()
    with FlopCounterMode(display=False) as counter:
        y = onednn.linear(x, w, b)
        y.sum().backward()
    assert ONEDNN_OP not in _ops(counter) and "aten.addmm" in _ops(counter)
    onednn.set_enabled(True)
    assert onednn.is_enabled()
    with FlopCounterMode(display=False) as counter:
        y2 = onednn.linear(x, w, b)
    assert _ops(counter) == {ONEDNN_OP}
    torch.testing.assert_close(y2, y, rtol=1e-5, atol=1e-6)


_PROBE = """
import torch
from torch.utils.flop_counter import FlopCounterMode
from scratchlm.model import GPT, ModelConfig, onednn
model = GPT(ModelConfig(vocab_size=50, context_length=8, n_layer=1, n_head=2, d_model=16))
with FlopCounterMode(display=False) as c:
    model(torch.zeros(1, 4, dtype=torch.long)).sum().backward()
ops = {str(op) for op in c.get_flop_counts()["Global"]}
print(onednn.is_enabled(), "mkldnn._linear_pointwise" in ops, "aten.addmm" in ops)
"""


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0", "False False True"),  # is_enabled, oneDNN GEMMs, F.linear's addmm
        ("off", "False False True"),
        ("1", "True True False"),
    ],
)
def test_environment_variable_switches_the_path(value: str, expected: str) -> None:
    env = {**os.environ, "SCRATCHLM_ONEDNN": value, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == expected


def test_environment_variable_typo_is_one_line_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCRATCHLM_ONEDNN", "maybe")
    monkeypatch.setattr(onednn, "_switch", None)
    monkeypatch.setattr(onednn, "_fast", None)
    with pytest.raises(ConfigError, match=r"^SCRATCHLM_ONEDNN='maybe' is not a switch; set it to 1 .* or 0 "):
        onednn.linear(*_xwb())


def test_failed_self_check_warns_once_and_uses_f_linear(monkeypatch: pytest.MonkeyPatch) -> None:
    """A oneDNN build that computes something else is caught at first use, not trusted."""
    real = onednn._gemm
    monkeypatch.setattr(onednn, "_gemm", lambda x, w, b: real(x, w, b) + 1e-3)
    monkeypatch.setattr(onednn, "_switch", True)
    monkeypatch.setattr(onednn, "_works", None)
    monkeypatch.setattr(onednn, "_fast", None)
    x, w, b = _xwb()
    with pytest.warns(
        RuntimeWarning, match="oneDNN linear gave results that differ from F.linear; using F.linear"
    ):
        y = onednn.linear(x, w, b)
    torch.testing.assert_close(y, F.linear(x, w, b), rtol=0, atol=0)
    assert not onednn.is_enabled()
    with FlopCounterMode(display=False) as counter, warnings.catch_warnings():
        warnings.simplefilter("error")  # a second warning would raise
        onednn.linear(x, w, b)
    assert ONEDNN_OP not in _ops(counter)


def test_self_check_is_not_counted_by_an_active_flop_counter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(onednn, "_works", None)
    monkeypatch.setattr(onednn, "_fast", None)
    x, w, b = _xwb(requires_grad=False)
    with FlopCounterMode(display=False) as counter:
        onednn.linear(x, w, b)
    assert counter.get_total_flops() == 2 * 10 * 12 * 7

"""`torch.compile` of the model and its chunked loss: one graph (`fullgraph=True`, no graph breaks), and 20
optimizer steps compiled give the eager losses within 1e-5."""

from __future__ import annotations

import copy

import torch

from scratchlm.model import GPT, ModelConfig
from scratchlm.train.optim import build_optimizer


def test_compiled_training_is_one_graph_and_matches_eager() -> None:
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=512, context_length=32, n_layer=2, n_head=2, d_model=32)
    eager = GPT(config).train()
    compiled_model = copy.deepcopy(eager)
    compiled = torch.compile(compiled_model, fullgraph=True)  # a graph break would raise
    g = torch.Generator().manual_seed(1)
    batches = [torch.randint(0, 512, (4, 33), generator=g) for _ in range(20)]
    losses = {}
    for name, model, fwd in (("eager", eager, eager), ("compiled", compiled_model, compiled)):
        opt = build_optimizer(model, 1e-3, 0.1, (0.9, 0.95), 1e-8, "cpu")
        losses[name] = []
        for ids in batches:
            targets = ids[:, 1:].clone()
            targets[0, :8] = -100  # a masked prompt, as in SFT
            loss = fwd(ids[:, :-1], targets=targets, reduction="mean")
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses[name].append(loss.item())
    assert losses["eager"][-1] < losses["eager"][0]  # it trained
    torch.testing.assert_close(torch.tensor(losses["compiled"]), torch.tensor(losses["eager"]), rtol=1e-5, atol=1e-5)

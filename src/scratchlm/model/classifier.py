"""A GPT with a classification head on the hidden state of each text's LAST NON-PADDING token.

    ids (B, T) --GPT.hidden_states--> (B, T, C) --pick row b at last[b]--> (B, C) --head--> logits (B, K)

Why the last real token: with causal attention it is the only position that has seen the whole text, and it
has seen nothing after it, so right-padding a batch to 20 or 200 tokens cannot change the prediction (a test
checks it). Training it is `scratchlm.train.modes.classify`; this module is only the network, so that loading a
classifier checkpoint needs no training code.
"""

from __future__ import annotations

import torch
from torch import nn

from scratchlm.model.gpt import GPT


class ClassifierModel(nn.Module):
    """A GPT plus a linear head; `forward(ids, last)` returns class logits (the loop only calls forward)."""

    def __init__(self, model: GPT, n_classes: int) -> None:
        super().__init__()
        self.model = model
        w = model.tok_emb.weight
        self.head = nn.Linear(model.config.d_model, n_classes, device=w.device, dtype=w.dtype)
        if w.device.type != "meta":
            with torch.no_grad():
                nn.init.normal_(self.head.weight, std=0.02)
                nn.init.zeros_(self.head.bias)

    def forward(self, ids: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
        h = self.model.hidden_states(ids)  # (B, T, C)
        h_last = h[torch.arange(ids.shape[0], device=ids.device), last]  # (B, C)
        return self.head(h_last)  # (B, K)


class RewardModel(ClassifierModel):
    """A GPT plus a scalar head: `forward(ids, last)` returns one score per text, (B,).

    The same network as a one-class classifier, so it is saved and loaded the same way (the head in
    classifier.safetensors); trained with the Bradley-Terry loss by `scratchlm.train.modes.reward`.
    """

    def __init__(self, model: GPT) -> None:
        super().__init__(model, 1)

    def forward(self, ids: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
        return super().forward(ids, last).squeeze(-1)  # (B,)

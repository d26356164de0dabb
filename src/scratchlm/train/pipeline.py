"""Pipeline parallelism: a GPT's blocks split into `--pp` stages run by `torch.distributed.pipelining`.

    stage 0:        ids -> token (+ position) embedding -> blocks[0 : k)                 -> activations
    stage s:        activations -> blocks[.. : ..)                                      -> activations
    stage pp - 1:   activations -> blocks[.. : n_layer) -> final norm -> head + loss    -> mean NLL

Decisions:
- A stage is a `StageModule` holding the model's own submodules under the model's own names (`blocks` is a
  ModuleDict keyed by the block's index in the whole model), so state dicts, optimizer state and checkpoints are
  keyed exactly as in one process and a run resumes under any other layout.
- The last stage computes the loss inside its forward (the targets are a keyword argument that the schedule
  splits into micro-batches like the inputs), through `GPT.token_nll`: the chunked head + cross-entropy of
  `model/loss.py`, no (B, T, V) logits, and under FSDP the head is used while its parameters are gathered.
- Gradients: each micro-batch's mean NLL is scaled by 1 / (micro-batches x accumulation steps) in the schedule's
  loss function (`scale_grads=False`): the sum over a step is then the gradient of the batch's mean loss, the
  same as one process's `(loss / accum).backward()` over the same windows.
- The loss exists on the last stage only; `Pipeline.share` broadcasts it to the other stages so logging, the
  spike guard and the stop decisions see the same number on every rank.
- A tied head and embedding (GPT-2, Llama-3.2-1B) live on the first and the last stage as two copies, as in
  Megatron-LM: the last stage's initial value is copied to the first (in one process the head's draw is the
  one that remains), their gradients are summed between the two stages before clipping (one process sums both
  uses into one gradient), and the gradient norm counts the matrix once. Both copies then take the same AdamW
  steps and stay equal.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from scratchlm.errors import ScratchlmError
from scratchlm.model.gpt import GPT
from scratchlm.model.layers import rope_cos_sin, rope_inv_freq
from scratchlm.model.sizing import stage_bounds


class StageModule(nn.Module):
    """One stage's share of a `GPT` (its submodules themselves, not copies): see the module docstring."""

    def __init__(self, model: GPT, start: int, stop: int, first: bool, last: bool) -> None:
        super().__init__()
        self.config = model.config
        self.first, self.last = first, last
        if first:
            self.tok_emb = model.tok_emb
            self.pos_emb = model.pos_emb
        self.drop = model.drop
        self.blocks = nn.ModuleDict({str(i): model.blocks[i] for i in range(start, stop)})
        if last:
            self.norm = model.norm
            self.lm_head = model.lm_head

    def forward(self, x: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        """ids (B, T) on the first stage, else activations (B, T, C) -> activations, or on the last stage the
        mean NLL of `targets` (B, T)."""
        B, T = x.shape[:2]
        positions = torch.arange(T, device=x.device).expand(B, T)
        if self.first:  # GPT's own embedding code, which reads only attributes this stage shares with GPT
            embed = GPT._embed_learned if self.config.positions == "learned" else GPT._embed_rope
            x, rope = embed(self, x, positions)  # type: ignore[arg-type]
        elif self.config.positions == "rope":
            dtype = torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else x.dtype
            rope = rope_cos_sin(rope_inv_freq(self.config, device=x.device), positions, dtype)
        else:
            rope = None
        for block in self.blocks.values():
            x = block(x, rope)
        if not self.last:
            return x
        assert targets is not None, "the last pipeline stage computes the loss: pass targets"
        return GPT.token_nll(self, self.norm(x), targets, reduction="mean")  # type: ignore[arg-type]


def split_model(model: nn.Module, layout: Any) -> StageModule:
    """This rank's stage of `model` (a `GPT`), by `layout.pp_rank` of `layout.pp`."""
    if not isinstance(model, GPT):
        raise ScratchlmError("--pp splits a plain GPT (pretraining); train this mode without --pp")
    start, stop = stage_bounds(model.config.n_layer, layout.pp)[layout.pp_rank]
    return StageModule(model, start, stop, first=layout.pp_rank == 0, last=layout.pp_rank == layout.pp - 1)


class Pipeline:
    """A stage and its schedule: `step` trains on one micro-batch (split into pipeline micro-batches), `eval`
    scores one; both return the batch's mean loss on the last stage (0 on the others: see `share`)."""

    def __init__(self, stage_module: StageModule, wrapped: nn.Module, layout: Any, schedule: str,
                 microbatches: int, device: torch.device) -> None:
        from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe

        self.layout, self.device = layout, device
        self.first, self.last = stage_module.first, stage_module.last
        self.microbatches = microbatches
        self.group = layout.mesh["pp"].get_group()
        # the global rank of the last stage in this rank's pipeline (same dp and tp coordinates)
        self.last_rank = layout.rank + (layout.pp - 1 - layout.pp_rank) * layout.dp * layout.tp
        self.scale = 1.0
        self.tied = self._tied_parameter(stage_module)
        self.tied_group = self._tied_group() if stage_module.config.tie_embeddings else None
        stage = PipelineStage(wrapped, layout.pp_rank, layout.pp, device, group=self.group)
        kind = ScheduleGPipe if schedule == "gpipe" else Schedule1F1B
        self.schedule = kind(stage, n_microbatches=microbatches, loss_fn=self._loss, scale_grads=False)

    def _tied_parameter(self, stage_module: StageModule) -> nn.Parameter | None:
        if not stage_module.config.tie_embeddings:
            return None
        if self.first:
            return stage_module.tok_emb.weight
        return stage_module.lm_head.weight if self.last else None

    def _tied_group(self) -> Any:
        """The process group of this pipeline's first and last stage (every rank creates every such group)."""
        lay = self.layout
        if lay.pp == 2:
            return self.group
        mine = None
        for dp_rank in range(lay.dp):
            for tp_rank in range(lay.tp):
                first = dp_rank * lay.tp + tp_rank
                group = dist.new_group([first, first + (lay.pp - 1) * lay.dp * lay.tp])
                if (dp_rank, tp_rank) == (lay.dp_rank, lay.tp_rank):
                    mine = group
        return mine

    @torch.no_grad()
    def tie_initial_weights(self) -> None:
        """The first stage's embedding := the last stage's head (call once after initialisation)."""
        if self.tied is not None:
            dist.broadcast(_local(self.tied), src=self.last_rank, group=self.tied_group)

    @torch.no_grad()
    def sum_tied_gradients(self) -> None:
        """The embedding's and the head's gradients summed on both stages (call after the last backward)."""
        if self.tied is not None and self.tied.grad is not None:
            dist.all_reduce(_local(self.tied.grad), group=self.tied_group)

    @property
    def counted_elsewhere(self) -> tuple[nn.Parameter, ...]:
        """Parameters whose gradient the norm counts on another stage (the head's copy of a tied embedding)."""
        return (self.tied,) if self.tied is not None and self.last else ()

    def _loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return output * self.scale  # the stage's forward made the mean NLL; `target` was used there

    def _run(self, run: Any, batch: dict[str, torch.Tensor], scale: float) -> torch.Tensor:
        self.scale = scale
        losses: list[torch.Tensor] = []
        args = (batch["ids"],) if self.first else ()
        if self.last:
            run(*args, target=batch["targets"], losses=losses, targets=batch["targets"], return_outputs=False)
            return torch.stack([x.detach().float() for x in losses]).sum() / (scale * self.microbatches)
        run(*args, return_outputs=False)
        return torch.zeros((), device=self.device)

    def step(self, batch: dict[str, torch.Tensor], accum: int) -> torch.Tensor:
        """Forward and backward of one micro-batch; gradients of (its mean loss / accum) accumulate."""
        return self._run(self.schedule.step, batch, 1.0 / (self.microbatches * accum))

    @torch.no_grad()
    def eval(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self._run(self.schedule.eval, batch, 1.0 / self.microbatches)

    def share(self, value: torch.Tensor) -> torch.Tensor:
        """The last stage's `value` on every stage of this pipeline."""
        value = value.clone()
        dist.broadcast(value, src=self.last_rank, group=self.group)
        return value


def _local(t: torch.Tensor) -> torch.Tensor:
    """This rank's part of a (DTensor) parameter or gradient, which collectives of plain tensors can change in
    place (the first and last stage shard the tied matrix alike)."""
    return t.to_local() if hasattr(t, "to_local") else t

"""The one training loop and what it is made of.

    from scratchlm.train import TrainConfig, train
    from scratchlm.train.modes.pretrain import PretrainMode
    result = train(TrainConfig(out=Path("runs/x"), max_steps=100), PretrainMode("shards/x", 256), model, tokenizer)

`config` (TrainConfig), `loop` (the loop, checkpoints, resume), `optim` (AdamW groups, LR schedules), `guard`
(loss-spike guard), `distributed` (torchrun, DDP, compile, activation checkpointing), `progress` and `plots`
(what a person watching sees), `modes/` (what differs between pretraining and each finetuning method).
Knows nothing of argv: the CLI builds the TrainConfig.
"""

from scratchlm.train.config import TrainConfig
from scratchlm.train.loop import TrainResult, train

__all__ = ["TrainConfig", "TrainResult", "train"]

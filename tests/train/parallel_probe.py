"""Run under torchrun by test_parallel.py: build a GPT on `meta`, shard it (`--parallel`), allocate and initialise
it per rank, and report (JSON, one file per rank) what each rank holds and how much its resident memory grew;
rank 0 also checks the gathered weights against the same seed's single-process `GPT(config)`.

    torchrun --nproc_per_node 2 tests/train/parallel_probe.py OUT_DIR [fsdp|zero2|ddp]
"""

from __future__ import annotations

import json
import os
import resource
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from scratchlm.model import GPT, ModelConfig
from scratchlm.train import distributed as D

SEED = 1234
# ~28M parameters (113 MB in fp32) in many mid-sized matrices: the largest single one is 2.4M (9.4 MB), so a rank
# that ever held the whole model would show it in its peak resident memory
CONFIG = ModelConfig(
    vocab_size=256, context_length=64, n_layer=4, n_head=12, d_model=768, d_ff=3072, dropout=0.0
)


def max_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def main() -> None:
    out, parallel = Path(sys.argv[1]), sys.argv[2]
    torch.set_num_threads(1)
    info = D.init_distributed("cpu")
    with torch.device("meta"):
        model = GPT(CONFIG)
    full_numel = sum(p.numel() for p in model.parameters())
    before = max_rss_bytes()
    if D.is_sharded(parallel, info):  # as the loop does: shard on meta, then allocate each rank's part
        D.wrap(model, info, compile=False, activation_checkpointing=False, parallel=parallel)
        D.materialize_and_init(model, info.device, SEED)
    else:  # a replica: allocated whole, then wrapped
        D.materialize_and_init(model, info.device, SEED)
        D.wrap(model, info, compile=False, activation_checkpointing=False, parallel=parallel)
    grown = max_rss_bytes() - before
    report = {
        "rank": info.rank,
        "full_numel": full_numel,
        "local_numel": D.local_numel(model),
        "rss_growth": grown,
        "full_bytes": 4 * full_numel,
    }
    state = D.full_model_state(model)
    if info.rank == 0:
        torch.manual_seed(SEED)
        reference = GPT(CONFIG).state_dict()
        report["equal"] = sorted(state) == sorted(reference) and all(
            torch.equal(state[k], reference[k]) for k in reference
        )
    (out / f"rank{info.rank}.json").write_text(json.dumps(report))
    dist.barrier()
    D.shutdown_distributed()


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()

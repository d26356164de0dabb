"""SMS spam classification: full finetuning vs LoRA vs prefix and prompt tuning from a small GPT, against simple
references; one table.

    python benchmarks/finetune.py                       # random-init 4-layer model, 300 steps per method
    python benchmarks/finetune.py --pretrain-steps 300  # first pretrain it briefly on tinyshakespeare
    python benchmarks/finetune.py --pretrain-steps 300 --pretrain-data sms   # ... or on the SMS training texts
    python benchmarks/finetune.py --small               # 2 layers, 60 steps: a quick check that it runs

Every method sees the same train/val/test split of the UCI SMS Spam Collection (seeded, 70/10/20) and is
scored on the same test split. References, timed in the same run: always answering the majority class (ham),
and a bag-of-tokens logistic regression on the same GPT-2 tokens. The finetuning rows run the real commands
(`scratchlm finetune classify`: full, `--peft lora`, `--peft prefix`, `--peft prompt`) through the one training
loop, from one checkpoint.

Prefix and prompt tuning leave the base frozen: they can only steer what the base already computes, so from a
random base they learn little beyond the head. `--pretrain-data sms` first pretrains the base as a language model
on the texts of the training split (no labels; domain-adaptive pretraining), the setting these methods are for.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import safe_open

from scratchlm import assets, checkpoint
from scratchlm import tokenizer as tokenizers
from scratchlm.cli.main import main as cli
from scratchlm.data.finetune import load_classification
from scratchlm.eval.classify import classification_report
from scratchlm.model import GPT, ModelConfig


def base_checkpoint(work: Path, shape: dict, context: int, pretrain_steps: int, threads: int,
                    texts: list[str] | None = None) -> Path:
    """A random-init checkpoint, or one pretrained for a few steps through the loop: on tinyshakespeare, or on
    `texts` (one document each) when given."""
    tok = tokenizers.load("gpt2")
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=50257, context_length=context, **shape))
    if pretrain_steps == 0:
        return checkpoint.save(work / "base", model, tok)
    from scratchlm.data.prepare import PrepareConfig, prepare
    from scratchlm.train.config import TrainConfig
    from scratchlm.train.loop import train
    from scratchlm.train.modes.pretrain import PretrainMode

    source: dict = {"dataset": ("tinyshakespeare",)}
    if texts is not None:
        (work / "texts.txt").write_text("\n\n".join(t.replace("\n", " ") for t in texts) + "\n")
        source = {"input": (work / "texts.txt",), "min_alpha_fraction": 0.0, "exact_dedup": False}
    prepare(PrepareConfig(out=work / "shards", split_docs=True, min_chars=1, near_dedup=False, workers=threads,
                          **source), progress=False)
    cfg = TrainConfig(out=work / "pretrain", max_steps=pretrain_steps, micro_batch_size=16, lr=1e-3, min_lr=1e-4,
                      warmup_steps=20, eval_every=0, save_every=0, progress=False)
    result = train(cfg, PretrainMode(work / "shards", min(context, 64)), model, tok)
    assert result.checkpoint is not None
    return result.checkpoint


def bag_of_tokens(data, steps: int) -> tuple[float, dict, int]:
    """Logistic regression on token counts (full-batch AdamW): a strong, cheap reference for spam."""
    t0 = time.perf_counter()
    seen = sorted({t for ids, _ in data.train for t in ids})  # features: the tokens seen in training
    column = {t: i for i, t in enumerate(seen)}
    V = len(seen)

    def features(examples):  # (N, V) token counts, capped at 3
        x = torch.zeros(len(examples), V)
        for row, (ids, _) in enumerate(examples):
            cols = [column[t] for t in ids if t in column]
            x[row].index_add_(0, torch.tensor(cols, dtype=torch.long), torch.ones(len(cols)))
        return x.clamp(max=3), torch.tensor([y for _, y in examples])

    x, y = features(data.train)
    w = torch.zeros(V, len(data.labels), requires_grad=True)
    b = torch.zeros(len(data.labels), requires_grad=True)
    opt = torch.optim.AdamW([w, b], lr=0.05, weight_decay=0.0)
    for _ in range(steps):
        loss = F.cross_entropy(x @ w + b, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    seconds = time.perf_counter() - t0
    xt, yt = features(data.test)
    pred = (xt @ w + b).argmax(-1)
    return seconds, classification_report(yt.tolist(), pred.tolist(), data.labels), w.numel() + b.numel()


def trainable_params(step: Path) -> int:
    """Parameters in the checkpoint's trained files (adapter-only checkpoints hold only what trained; a
    reparameterised prefix trained its table and MLP, kept for resume, and saves the smaller folded prefix)."""
    n = 0
    trained = "prefix_train.safetensors" if (step / "prefix_train.safetensors").is_file() else "adapters.safetensors"
    for f in (trained, "model.safetensors", "classifier.safetensors"):
        if (step / f).is_file():
            with safe_open(str(step / f), framework="pt") as st:
                n += sum(_prod(st.get_slice(k).get_shape()) for k in st.keys())  # noqa: SIM118
    return n


def _prod(shape: list[int]) -> int:
    out = 1
    for s in shape:
        out *= s
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--small", action="store_true", help="2 layers, width 64, 60 steps: a quick check")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps per finetuning method (300; 60 --small)")
    p.add_argument("--pretrain-steps", type=int, default=0, help="pretrain the base first (0: random init)")
    p.add_argument("--pretrain-data", choices=("shakespeare", "sms"), default="shakespeare",
                   help="what to pretrain on: tinyshakespeare, or the SMS training split's texts (no labels)")
    p.add_argument("--max-length", type=int, default=64, help="tokens per message (longer ones are truncated)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--device", default="auto")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    shape = dict(n_layer=2, n_head=4, d_model=64, d_ff=256) if args.small else dict(n_layer=4, n_head=4, d_model=128,
                                                                                     d_ff=512)
    steps = args.steps or (60 if args.small else 300)
    spam = assets.fetch("sms-spam")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        tok = tokenizers.load("gpt2")
        data = load_classification(spam, tok, columns=("label", "text"),
                                   max_length=args.max_length, val_fraction=0.1, test_fraction=0.2, seed=1337)
        texts = [tok.decode(ids) for ids, _ in data.train] if args.pretrain_data == "sms" else None
        t0 = time.perf_counter()
        base = base_checkpoint(work, shape, max(args.max_length, 128), args.pretrain_steps, args.threads, texts)
        base_s = time.perf_counter() - t0
        majority = classification_report([y for _, y in data.test], [0] * len(data.test), data.labels)
        rows.append(("majority class (reference)", 0, 0, 0.0, majority))
        seconds, report, n = bag_of_tokens(data, 100)
        rows.append(("bag-of-tokens logistic regression (ref.)", n, 100, seconds, report))
        methods = (
            ("full finetune (--train all)", ["--train", "all", "--lr", "1e-3"]),
            ("LoRA r=8 q,k,v,o,mlp + head", ["--peft", "lora", "--lora.rank", "8", "--lora.targets", "q,k,v,o,mlp",
                                            "--lr", "3e-3"]),
            ("prefix tuning L=16 + head", ["--peft", "prefix", "--prefix-length", "16", "--lr", "3e-2"]),
            ("prefix L=16, MLP reparam 512 + head", ["--peft", "prefix", "--prefix-length", "16",
                                                     "--prefix.reparam", "512", "--lr", "3e-3"]),
            ("prompt tuning L=16 + head", ["--peft", "prompt", "--prefix-length", "16", "--lr", "3e-2"]),
        )
        for i, (name, extra) in enumerate(methods):
            out = work / f"method{i}"
            argv = ["finetune", "classify", "--checkpoint", str(base), "--data", str(spam), "--columns", "label,text",
                    "--max-length", str(args.max_length), "--micro-batch-size", str(args.batch),
                    "--max-steps", str(steps), "--min-lr", "1e-5", "--warmup-steps", str(max(steps // 20, 1)),
                    "--eval-every", "0", "--save-every", "0", "--progress", "false", "--device", args.device,
                    "--out", str(out), *extra]
            t0 = time.perf_counter()
            with contextlib.redirect_stdout(io.StringIO()):  # the command's own report; the table is below
                assert cli(argv) == 0
            seconds = time.perf_counter() - t0
            report = json.loads((out / "report.json").read_text())
            step = checkpoint.resolve(out)
            rows.append((name, trainable_params(step), steps, seconds, report["test"]))
    corpus = "tinyshakespeare" if args.pretrain_data == "shakespeare" else "SMS training-text"
    start = "random init" if args.pretrain_steps == 0 else f"{args.pretrain_steps} {corpus} pretraining steps"
    print(f"\nSMS spam test split ({len(data.test)} messages); model {shape}, {start} ({base_s:.1f} s); "
          f"max {args.max_length} tokens, batch {args.batch}")
    print(f"{'method':<42} {'trained params':>14} {'steps':>6} {'time s':>8} {'test acc':>9} {'spam P':>7} "
          f"{'spam R':>7}")
    for name, n, s, seconds, r in rows:
        spam_c = r["per_class"]["spam"]
        print(f"{name:<42} {n:>14,} {s:>6} {seconds:>8.1f} {r['accuracy']:>9.4f} {spam_c['precision']:>7.3f} "
              f"{spam_c['recall']:>7.3f}")


if __name__ == "__main__":
    main()

"""GRPO on the CPU arithmetic task: pass@1 and self-consistency of the SFT start and of the GRPO model; one table.

    python benchmarks/rl.py                      # the shipped recipes: rl arithmetic, pretrain, SFT, GRPO
    python benchmarks/rl.py --grpo-minutes 5     # a shorter GRPO budget
    python benchmarks/rl.py --quick              # a few steps of each: checks that the pipeline runs

Every stage runs the real command a user types (`scratchlm rl arithmetic`, `pretrain --preset arith`,
`finetune sft --preset arith-sft`, `finetune grpo --preset arith-grpo`), with the recipes' settings. Both models
are then scored on the same held-out problems (test.jsonl: no problem of it is in any training file):

    pass@1      greedy answer correct (the `math` verifier: the last number equals the answer)
    sampled     mean correctness of 8 samples at temperature 1 (what GRPO optimises)
    maj@8       self-consistency: the majority vote over the 8 samples' final numbers is correct
    digits      share of greedy answers written with digits (the rest are in words, which `math` scores 0)
    acc|digits  pass@1 among the answers written with digits: the arithmetic alone, without the format

The SFT model is the reference: GRPO starts from it, so the difference is what GRPO added. The target (issue
19): GRPO raises pass@1 by at least 15 points within 10 minutes of GRPO on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run_cli import scratchlm  # noqa: E402

from scratchlm import checkpoint  # noqa: E402
from scratchlm.generate import SampleConfig  # noqa: E402
from scratchlm.generate.select import majority_vote  # noqa: E402
from scratchlm.generate.text import complete  # noqa: E402
from scratchlm.rl.verifiers import get_verifier  # noqa: E402
from scratchlm.tokenizer.chat import ChatTemplate  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
NUMBER = re.compile(r"-?\d+")


def final_number(text: str) -> str:
    """The completion's final answer: its last integer ("" when there is none)."""
    found = NUMBER.findall(text)
    return found[-1] if found else ""


def score(ckpt: Path, records: list[dict], samples: int, batch: int = 128) -> dict[str, float]:
    """Greedy pass@1, mean sampled correctness and maj@`samples` of a checkpoint on `records`."""
    loaded = checkpoint.read(ckpt, expect="lm")
    model, tok = loaded.model.eval(), loaded.tokenizer
    template = ChatTemplate.from_config(loaded.config.get("chat_template"))
    verify = get_verifier("math")
    prompts = [template.encode_messages(tok, [{"role": "user", "content": r["prompt"]}], add_generation_prompt=True)[0]
               for r in records]
    stops = dict(stop=[*template.stop_strings, template.assistant_suffix], max_new_tokens=8)
    greedy, sampled, voted, digits = 0.0, 0.0, 0.0, 0.0
    for s in range(0, len(records), batch):
        chunk, ids = records[s : s + batch], prompts[s : s + batch]
        g = complete(model, tok, ids, SampleConfig(temperature=0.0, **stops), stop_ids=template.stop_ids(tok))
        n = complete(model, tok, ids, SampleConfig(temperature=1.0, seed=1234, n=samples, **stops),
                     stop_ids=template.stop_ids(tok))
        for rec, [best], group in zip(chunk, g, n):
            greedy += verify(rec, best.text)
            digits += bool(final_number(best.text))
            sampled += sum(verify(rec, c.text) for c in group) / samples
            voted += verify(rec, group[majority_vote([c.text for c in group])[0]].text)
    k = len(records)
    return {"pass@1": 100 * greedy / k, "sampled": 100 * sampled / k, f"maj@{samples}": 100 * voted / k,
            "digits": 100 * digits / k, "acc|digits": 100 * greedy / max(digits, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=None, help="working folder (default: a temporary one)")
    ap.add_argument("--grpo-minutes", type=float, default=10.0, help="GRPO's wall-time budget")
    ap.add_argument("--samples", type=int, default=8, help="samples per problem for self-consistency")
    ap.add_argument("--n-test", type=int, default=100, help="held-out problems scored")
    ap.add_argument("--quick", action="store_true", help="a few steps of every stage")
    ap.add_argument("--note", default="", help="appended to the saved table (e.g. machine load)")
    args = ap.parse_args()
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        data, times = work / "arith", {}
        quick = ["--max-steps", "4", "--log-every", "1"] if args.quick else []
        stages = [
            ("task", ["rl", "arithmetic", "--out", str(data), "--n-test", str(args.n_test)]),
            ("pretrain", ["pretrain", "--preset", "arith", "--data", str(data / "pretrain"), "--out",
                          str(work / "pre"), "--progress", "false", *quick]),
            ("sft", ["finetune", "sft", "--preset", "arith-sft", "--checkpoint", str(work / "pre"), "--data",
                     str(data / "sft.jsonl"), "--out", str(work / "sft"), "--progress", "false", *quick]),
            ("grpo", ["finetune", "grpo", "--preset", "arith-grpo", "--checkpoint", str(work / "sft"), "--data",
                      str(data / "prompts.jsonl"), "--out", str(work / "grpo"), "--progress", "false",
                      "--max-minutes", str(args.grpo_minutes), *quick]),
        ]
        for name, cmd in stages:
            t0 = time.perf_counter()
            scratchlm(cmd)
            times[name] = time.perf_counter() - t0
            print(f"{name}: {times[name]:.0f} s", file=sys.stderr, flush=True)
        grpo_steps = [json.loads(line) for line in (work / "grpo" / "metrics.jsonl").read_text().splitlines()]
        grpo_steps = [r for r in grpo_steps if r["kind"] == "train"]
        records = [json.loads(line) for line in (data / "test.jsonl").read_text().splitlines()]
        rows = {name: score(work / name, records, args.samples) for name in ("sft", "grpo")}

    cols = list(rows["sft"])
    lines = [f"GRPO on the arithmetic task: {len(records)} held-out problems, torch {torch.__version__}, "
             f"{torch.get_num_threads()} threads",
             f"{'model':<12}" + "".join(f"{c:>11}" for c in cols) + f"{'train s':>10}"]
    for name, label in (("sft", "SFT start"), ("grpo", "GRPO")):
        lines.append(f"{label:<12}" + "".join(f"{rows[name][c]:>11.1f}" for c in cols) + f"{times[name]:>10.0f}")
    gain = rows["grpo"]["pass@1"] - rows["sft"]["pass@1"]
    first, last = grpo_steps[0], grpo_steps[-1]
    lines.append(f"GRPO: {len(grpo_steps)} logged steps to step {last['step']} in {last['elapsed_s']:.0f} s of "
                 f"training; rollout reward {first['reward_mean']:.2f} -> {last['reward_mean']:.2f}; "
                 f"pass@1 {gain:+.1f} points (target: +15 within 10 minutes on 2 quiet cores)")
    lines.append(f"pretrain {times['pretrain']:.0f} s, SFT {times['sft']:.0f} s (wall time of the commands)")
    if args.note:
        lines.append(args.note)
    table = "\n".join(lines)
    print(table)
    if not args.quick:
        RESULTS.mkdir(exist_ok=True)
        out = RESULTS / f"rl-{date.today().isoformat()}.txt"
        out.write_text(table + "\n")
        print(f"saved {out}")


if __name__ == "__main__":
    main()

"""GRPO: the loss and advantages against hand computations, skipped groups, KL to the reference, resume, bad input."""

from __future__ import annotations

import json
import math
import zlib
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from scratchlm import checkpoint
from scratchlm.cli.main import main
from scratchlm.rl.arithmetic import in_words
from scratchlm.tokenizer.chat import ChatTemplate
from scratchlm.train.modes.grpo import GRPOMode, group_advantages, grpo_loss

PROMPTS = [{"prompt": f"add {a} and {b}", "answer": str(a + b)} for a, b in [(2, 3), (10, 7), (41, 8), (5, 5)]]


def test_advantages_equal_hand_computation() -> None:
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 0.0]])
    assert group_advantages(rewards).tolist() == [[0.5, -0.5, -0.5, 0.5], [0.25, 0.25, 0.25, -0.75]]
    std = [math.sqrt(4 * 0.25 / 3), math.sqrt((3 * 0.25**2 + 0.75**2) / 3)]  # sample std (n - 1)
    want = [[0.5 / (std[0] + 1e-4), -0.5 / (std[0] + 1e-4)] * 2, [0.25 / (std[1] + 1e-4)] * 3 + [-0.75 / (std[1] + 1e-4)]]
    want[0] = [want[0][0], want[0][1], want[0][1], want[0][0]]
    assert torch.allclose(group_advantages(rewards, std_normalize=True), torch.tensor(want), atol=1e-6)


@pytest.mark.parametrize("loss_norm", ["sequence", "token"])
def test_loss_equals_hand_computation(loss_norm: str) -> None:
    # two completions of one group: 3 and 2 tokens (the last position of row 2 is padding)
    logps = [[-1.0, -0.5, -2.0], [-0.3, -1.2, 0.0]]
    old = [[-1.0, -0.9, -1.5], [-0.6, -1.2, 0.0]]
    ref = [[-1.1, -0.5, -1.8], [-0.3, -1.0, 0.0]]
    mask = [[1, 1, 1], [1, 1, 0]]
    adv, eps, beta = [0.7, -0.7], 0.2, 0.05
    terms: list[list[float]] = [[], []]
    for i in range(2):
        for t in range(3):
            if not mask[i][t]:
                continue
            ratio = math.exp(logps[i][t] - old[i][t])
            pg = -min(ratio * adv[i], min(max(ratio, 1 - eps), 1 + eps) * adv[i])
            x = ref[i][t] - logps[i][t]
            terms[i].append(pg + beta * (math.exp(x) - x - 1))
    want = (sum(sum(t) / len(t) for t in terms) / 2 if loss_norm == "sequence"
            else sum(map(sum, terms)) / sum(map(len, terms)))
    loss, stats = grpo_loss(torch.tensor(logps), torch.tensor(old), torch.tensor(ref), torch.tensor(adv),
                            torch.tensor(mask).bool(), eps, beta, loss_norm)
    assert loss.item() == pytest.approx(want, abs=1e-6)
    # ratios: e^0.4 = 1.49 and e^0.3 = 1.35 leave [0.8, 1.2]; e^-0.5 = 0.61 too: 3 of 5 tokens
    assert stats["clip_fraction"].item() == pytest.approx(3 / 5)


def _mode(ckpt: Path, reward, k: int = 8, kl_coef: float = 0.0) -> GRPOMode:
    loaded = checkpoint.read(ckpt, expect="lm")
    return GRPOMode("unused", ChatTemplate.named("plain"), reward, k=k, max_new_tokens=8, kl_coef=kl_coef), loaded


def _coin(record: dict, completion: str) -> tuple[float, None]:
    """A reward that splits a random model's completions (a stable hash of the text, not Python's)."""
    if record["answer"] == "10":  # the 5 + 5 prompt: always solved, so its group is skipped
        return 1.0, None
    return float(zlib.crc32(completion.encode()) % 2), None


def _setup(mode: GRPOMode, loaded, tmp_path: Path) -> None:
    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps(p) + "\n" for p in PROMPTS))
    mode.data_path = data
    mode.setup(loaded.model, loaded.tokenizer)


def test_skipped_groups_change_nothing_and_kl_is_zero_at_the_start(char_ckpt: Path, tmp_path: Path) -> None:
    mode, loaded = _mode(char_ckpt, _coin, kl_coef=0.1)
    _setup(mode, loaded, tmp_path)
    hard, easy = mode.prompts[0], mode.prompts[3]
    alone, stats_alone = mode.rollout([hard], seed=5)
    mixed, stats_mixed = mode.rollout([hard, easy], seed=5)
    assert alone is not None and mixed is not None
    assert stats_alone["skipped_groups"] == 0 and stats_mixed["skipped_groups"] == 1
    assert stats_mixed["reward_mean"] == pytest.approx((stats_alone["reward_mean"] + 1.0) / 2)
    for key in ("ids", "targets", "advantages", "ref_logps"):
        assert torch.equal(alone[key], mixed[key]), key
    losses = []
    for batch in (alone, mixed):
        loaded.model.zero_grad()
        loss, stats = mode.loss(loaded.model, batch)
        loss.backward()
        losses.append((loss.item(), [p.grad.clone() for p in loaded.model.parameters()]))
        # the policy is the reference: KL 0; ratio 1 and zero-mean advantages: the loss is 0 as well
        assert stats["kl"].item() == pytest.approx(0.0, abs=1e-7)
        assert loss.item() == pytest.approx(0.0, abs=1e-6)
    assert losses[0][0] == losses[1][0]
    assert all(torch.equal(a, b) for a, b in zip(losses[0][1], losses[1][1]))
    assert any(g.abs().sum() > 0 for g in losses[0][1])  # ... while its gradient is not


def test_each_prompt_of_a_rollout_draws_its_own_samples(char_ckpt: Path, tmp_path: Path) -> None:
    """Sample i of every prompt used to share one seed, so a prompt twice in a batch got the same k completions."""
    mode, loaded = _mode(char_ckpt, _coin, k=4)
    _setup(mode, loaded, tmp_path)
    hard = mode.prompts[0]
    batch, _ = mode.rollout([hard, hard], seed=5)
    assert batch is not None and batch["ids"].shape[0] == 8  # neither group was skipped
    first, second = batch["ids"][:4], batch["ids"][4:8]  # the two groups of k rows, in prompt order
    assert not torch.equal(first, second)
    alone, _ = mode.rollout([hard], seed=5)
    assert alone is not None and torch.equal(alone["ids"], first)  # the first prompt keeps the rollout's seed


def _run(ckpt: Path, data: Path, out: Path, *more: str) -> int:
    return main(["finetune", "grpo", "--checkpoint", str(ckpt), "--data", str(data), "--template", "plain",
                 "--verifier", "math", "--k", "4", "--max-new-tokens", "6", "--micro-batch-size", "2",
                 "--lr", "1e-3", "--schedule", "constant", "--warmup-steps", "0", "--log-every", "1",
                 "--progress", "false", "--precision", "fp32", "--out", str(out), *more])


def test_resumed_run_equals_straight_run(char_ckpt: Path, tmp_path: Path, metrics) -> None:
    """Two updates per rollout and a checkpoint between them (step 3): the pending rollout is in the state."""
    from scratchlm.train.config import TrainConfig
    from scratchlm.train.loop import seed_everything, train

    def run(out: Path, steps: int, resume: str | None = None) -> None:
        seed_everything(0)
        mode, loaded = _mode(char_ckpt, _coin, k=4, kl_coef=0.05)
        mode.updates = 2
        data = tmp_path / "prompts.jsonl"
        data.write_text("".join(json.dumps(p) + "\n" for p in PROMPTS))
        mode.data_path = data
        cfg = TrainConfig(out=out, max_steps=steps, micro_batch_size=2, lr=1e-3, schedule="constant",
                          warmup_steps=0, eval_every=0, save_every=3, log_every=1, progress=False,
                          precision="fp32", resume=resume)
        train(cfg, mode, loaded.model, loaded.tokenizer)

    run(tmp_path / "a", 6)
    run(tmp_path / "b", 3)
    run(tmp_path / "b", 6, resume="auto")
    a, b = (load_file(str(tmp_path / r / "step_000006" / "model.safetensors")) for r in ("a", "b"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    ra, rb = metrics(tmp_path / "a"), metrics(tmp_path / "b")
    skip = {"tokens_per_s", "elapsed_s", "mfu"}
    assert [{k: v for k, v in r.items() if k not in skip} for r in ra] == [
        {k: v for k, v in r.items() if k not in skip} for r in rb]
    assert {"reward_mean", "pass_at_1", "response_length", "kl", "entropy", "skipped_groups"} <= set(ra[0])
    assert ra[0]["kl"] == pytest.approx(0.0, abs=1e-7) and ra[-1]["kl"] > 0  # moves away from the reference
    assert ra[1]["clip_fraction"] >= 0 and ra[0]["clip_fraction"] == 0  # the first update's ratio is 1
    assert (tmp_path / "b" / "loss.png").stat().st_size > 1000


def test_bad_input_is_one_line(char_ckpt: Path, tmp_path: Path, capsys) -> None:
    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps(p) + "\n" for p in PROMPTS))
    assert _run(char_ckpt, data, tmp_path / "k1", "--k", "1") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --k 1: GRPO compares the k completions") and "\n" not in err
    long = tmp_path / "long.jsonl"
    long.write_text(json.dumps({"prompt": "x" * 300, "answer": "1"}) + "\n")
    assert _run(char_ckpt, long, tmp_path / "long") == 2
    err = capsys.readouterr().err.strip()
    assert "record 0's prompt is" in err and "the model's context is 256" in err and "\n" not in err
    assert not (tmp_path / "long").exists() or not any((tmp_path / "long").iterdir())


def test_arithmetic_task_is_correct_and_held_out(tmp_path: Path, capsys) -> None:
    import re

    out = tmp_path / "arith"
    assert main(["rl", "arithmetic", "--out", str(out), "--n-pretrain", "300", "--n-sft", "200",
                 "--n-prompts", "200", "--n-test", "100"]) == 0
    read = lambda name: [json.loads(line) for line in (out / name).read_text().splitlines()]  # noqa: E731
    prompts, test = read("prompts.jsonl"), read("test.jsonl")
    sft = [{"prompt": r["messages"][0]["content"], "answer": r["messages"][1]["content"]} for r in read("sft.jsonl")]
    assert (len(prompts), len(test), len(sft)) == (200, 100, 200)

    def problem(prompt: str) -> tuple[int, str, int]:
        a, b = map(int, re.findall(r"\d+", prompt))
        if "subtract" in prompt:
            a, b = b, a  # "subtract b from a"
        return a, "-" if ("minus" in prompt or "-" in prompt or "subtract" in prompt) else "+", b

    words = 0
    for r in prompts + test + sft:
        a, op, b = problem(r["prompt"])
        right = a + b if op == "+" else a - b
        assert right >= 0 and r["answer"] in (str(right), in_words(right)), r
        words += not r["answer"].isdigit()
    assert 70 <= words <= 130  # --words-fraction 0.5 of the 200 SFT answers (never in prompts or test)
    assert in_words(105) == "one hundred five" and in_words(47) == "forty-seven" and in_words(0) == "zero"
    held_out = {problem(r["prompt"]) for r in test}
    assert not held_out & {problem(r["prompt"]) for r in prompts + sft}
    text = (out / "pretrain" / "manifest.json").read_text()
    assert '"kind": "char"' in text
    # a second run into the same folder is refused (nothing overwritten)
    assert main(["rl", "arithmetic", "--out", str(out)]) == 2
    assert "error:" in capsys.readouterr().err

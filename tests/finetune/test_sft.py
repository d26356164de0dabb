"""SFT: the mode's loss covers response tokens only; a tiny model learns a handful of pairs and reproduces
them at temperature 0 through `scratchlm generate` (prompt formatted with the checkpoint's template) and
`scratchlm chat` (which applies the template itself)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch.nn.functional as F

from scratchlm import checkpoint
from scratchlm.cli.main import main
from scratchlm.data.finetune import IGNORE
from scratchlm.tokenizer.chat import ChatTemplate
from scratchlm.train.modes.sft import SFTMode

PAIRS = [
    {"instruction": "What is the capital of France?", "input": "", "output": "Paris."},
    {"instruction": "Reverse the word.", "input": "stop", "output": "pots"},
    {"instruction": "Name a primary color.", "input": "", "output": "Red, like a ripe tomato."},
    {"instruction": "Translate to German.", "input": "good morning", "output": "Guten Morgen"},
]


def test_loss_counts_response_tokens_only(tiny_model, tmp_path: Path) -> None:
    from scratchlm import tokenizer as tokenizers

    data = tmp_path / "pairs.json"
    data.write_text(json.dumps(PAIRS))
    tok = tokenizers.load("gpt2")
    mode = SFTMode(data, ChatTemplate.named("chatml"), max_length=64, val_fraction=0.0)
    model = mode.setup(tiny_model, tok)
    assert tok.vocab_size == 50259 and model.config.vocab_size == 50259  # <|im_start|>, <|im_end|> added
    assert model.tok_emb.weight.shape == (50259, 64) and model.lm_head.weight is model.tok_emb.weight
    batch = next(mode.train_batches(4, seed=0, rank=0, world_size=1))
    loss, _ = mode.loss(model, batch)
    # direct calculation: mean NLL over exactly the response tokens (+ end marker) of each example
    logits = model(batch["ids"]).float()
    nll, n = 0.0, 0
    for row in range(4):
        ids = batch["ids"][row].tolist()
        text = tok.decode(ids)
        start = text.index("<|im_start|>assistant\n") + len("<|im_start|>assistant\n")
        prefix_len = len(tok.encode(text[:start], allowed_special="all"))
        response = [t for t in batch["targets"][row].tolist() if t != IGNORE]
        assert tok.decode(response).endswith("<|im_end|>\n")
        for j, target in enumerate(response):
            pos = prefix_len - 1 + j  # the position whose output predicts this target
            assert batch["targets"][row, pos].item() == target
            if j + 1 < len(response):  # ... and is the next input token
                assert batch["ids"][row, pos + 1].item() == target
            nll -= F.log_softmax(logits[row, pos], -1)[target].item()
            n += 1
    assert loss.item() == pytest.approx(nll / n, rel=1e-5)


def test_tiny_model_reproduces_its_instruction_pairs(base_ckpt: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    data = tmp_path / "pairs.json"
    data.write_text(json.dumps(PAIRS))
    out = tmp_path / "sft"
    argv = ["finetune", "sft", "--checkpoint", str(base_ckpt), "--data", str(data), "--val-fraction", "0",
            "--max-length", "64", "--micro-batch-size", "4", "--max-steps", "60", "--lr", "3e-3", "--min-lr", "3e-4",
            "--warmup-steps", "5", "--eval-every", "0", "--save-every", "0", "--out", str(out), "--progress", "false"]
    assert main(argv) == 0
    config = checkpoint.load_config(out)
    template = ChatTemplate.from_config(config["chat_template"])
    assert template.name == "chatml" and config["model"]["vocab_size"] == 50259
    capsys.readouterr()
    for pair in PAIRS:
        # the checkpoint's template frames the prompt as a user turn and ends the reply at <|im_end|>
        [user] = template.alpaca_messages(pair, with_output=False)
        assert main(["generate", "--checkpoint", str(out), "--prompt", user["content"], "--temperature", "0",
                     "--max-new-tokens", "20", "--device", "cpu"]) == 0
        assert capsys.readouterr().out == pair["output"] + "\n"
        # --raw continues text as given: the same answer when the prompt is already rendered
        prompt = template.render(template.alpaca_messages(pair, with_output=False), add_generation_prompt=True)
        assert main(["generate", "--checkpoint", str(out), "--prompt", prompt, "--temperature", "0", "--raw",
                     "--max-new-tokens", "20", "--stop", "<|im_end|>", "--device", "cpu"]) == 0
        assert capsys.readouterr().out == pair["output"] + "\n"
    # `scratchlm chat` formats the turn with the stored template and stops on <|im_end|> by itself
    user = PAIRS[0]["instruction"]
    monkeypatch.setattr("sys.stdin", io.StringIO(user + "\n/exit\n"))
    assert main(["chat", "--checkpoint", str(out), "--temperature", "0", "--max-new-tokens", "20",
                 "--device", "cpu"]) == 0
    assert capsys.readouterr().out == PAIRS[0]["output"] + "\n"

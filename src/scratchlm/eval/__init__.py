"""Evaluation: numbers to put next to published ones.

- `perplexity`: the Hugging Face guide's sliding-window protocol; token/word perplexity and bits per byte.
- `fewshot`: multiple choice by log-likelihood (lm-evaluation-harness's acc / acc_norm), deterministic shots.
- `tasks`: HellaSwag, ARC and MMLU from their native formats (fetched through `scratchlm.assets`).
- `judge`: model-as-judge through any OpenAI-compatible endpoint (stdlib HTTP, retries, resumable reports).
- `periodic`: `evaluate_tasks(model, tokenizer, tasks, device)` for the training loop.
- `report`: tables, atomic JSON reports, PNG plots.

Takes a model (`model(ids) -> logits`) and a tokenizer; knows nothing of training or the command line.
"""

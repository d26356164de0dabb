"""Rewards for reinforcement learning and verifier-based evaluation.

- `verifiers.py`  the `Verifier` interface (record, completion -> reward in [0, 1]) and the shipped verifiers:
                  `math` (last \\boxed{} or number, SymPy equality), `exact`, `regex:PATTERN`,
                  `python:MODULE:FUNC`, `reward:RM_PATH` (a trained reward model)
- `mathanswer.py` extracting and comparing math answers
- `records.py`    GSM8K / MATH / instruction records -> prompt messages and reference answers; converters
- `reward.py`     scoring texts with a reward-model checkpoint

RLHF (a reward model) and RLVR (a checker) share one code path: both are a `Verifier`.

`arithmetic.py` holds a verifiable task that learns on a CPU; the
GRPO objective itself is a training mode of the one loop (`scratchlm.train.modes.grpo`).
"""

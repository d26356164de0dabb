"""Reinforcement learning from verifiable rewards: verifiers, voting, and a task that learns on a CPU.

The GRPO objective itself is a training mode of the one loop (`scratchlm.train.modes.grpo`).
"""

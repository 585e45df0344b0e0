"""RLHF rounds, training runs, checkpoints and exports to trainers.

Owns the checkpoint registry (``PolicyCheckpoint``) that every sampled response points to. Later work
adds reward-model runs, rejection-sampling and PPO rounds (RLHF-V1, V2, ...).
"""

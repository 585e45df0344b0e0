"""Framework-free model code: loading, generation, reward models, losses, PPO.

Nothing here imports Django (import-linter enforces it): functions take paths, dataclasses and tensors,
so researchers can use them from a notebook or a cluster job.
"""

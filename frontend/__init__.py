"""The htmx pages: annotators' workspace (queue and prompt mode, multi-turn, keyboard-driven), their own
labels, and reviewers' read-only views. No domain logic: views call ``annotation.services``."""

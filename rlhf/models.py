"""Rounds, training runs and their outputs (the checkpoint registry lives in ``annotation``: responses
name the checkpoint that sampled them, and dependencies point down).
"""

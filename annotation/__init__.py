"""Preference data and its rules: batches, dialogues, responses, comparison tasks, assignments
(leases), comparisons (labels) and their history. Writes go through ``annotation.services``; reads that
check access live in ``annotation.selectors``."""

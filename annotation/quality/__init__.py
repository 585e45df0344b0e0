"""Annotation quality: agreement statistics, review queue and batch statistics (reads; writes are services)."""

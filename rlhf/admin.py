"""Admin for rounds and training runs (the checkpoint registry's admin is in ``annotation.admin``)."""

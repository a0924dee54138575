"""Searches declared in a study file's [search] table, run with Optuna: the space (space.py), the
trials and their pruning (runner.py), and the report (report.py)."""

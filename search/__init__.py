"""Searches declared in a study file's [search] table (the table itself: study_file/space.py), run
with Optuna: the trials and their pruning (runner.py), and the report (report.py)."""

"""The analysis of run logs, one module per concern, in the order analyze_results.py uses them (no torch):

    runs        logs read and checked, runs grouped by their settings
    stats       means, confidence intervals, paired t-tests, Holm
    verdicts    OLS with pooled error, TOST, Holm over the declared comparisons, power
    findings    what a report may claim: the n-gram models first, then the verdicts
    tables      the groups' tables, curves, inside-the-model table, lr sweeps
    figures     every figure
    report      report.md: the document a reader opens first
"""

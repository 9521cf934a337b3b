"""Whole-project runs: prelabel (live and Batch API) and plan."""

"""Prediction: per-project plans, the per-task pipeline (prompt, call, parse, align, validate), scheduling."""

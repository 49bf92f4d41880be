"""Optuna driver: study definitions, the proxy objective, workers, export, final evaluation and reports."""

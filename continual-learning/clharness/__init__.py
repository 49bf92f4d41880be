"""The frozen continual-learning benchmark harness (see ../../shared/docs/HARNESS.md and docs/harness.md)."""

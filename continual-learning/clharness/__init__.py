"""The frozen continual-learning benchmark harness (see docs/contract.md and docs/harness.md)."""

"""Analyses: pure functions from a backend / Trace and parameters to a result dataclass."""

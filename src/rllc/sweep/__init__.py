"""Sweeps over checkpoints x components x data sets, and the SQLite results store they write."""

from rllc.sweep.store import ResultRow, ResultStore, config_hash, load_results

__all__ = ["ResultRow", "ResultStore", "config_hash", "load_results"]

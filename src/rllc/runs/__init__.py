"""Runs rllc did not train: checkpoint series imported as run directories (`rllc import`), read by `load_run`."""

from rllc.runs.imported import IMPORT_FORMAT, ImportedRun, import_series

__all__ = ["IMPORT_FORMAT", "ImportedRun", "import_series"]

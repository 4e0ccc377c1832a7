"""Figures and reports."""

from rllc.report.curves import plot_full, plot_heads, plot_sweep
from rllc.report.html import write_report
from rllc.report.plots import plot_loss_curve

__all__ = ["plot_full", "plot_heads", "plot_loss_curve", "plot_sweep", "write_report"]

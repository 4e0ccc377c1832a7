"""Figures and reports."""

from rllc.report.plots import plot_head_scores, plot_loss_curve

__all__ = ["plot_head_scores", "plot_loss_curve"]

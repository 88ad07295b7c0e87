"""Text for calibration, training and evaluation."""

from slimkit.data.splits import DataSplits, build_splits, wikipedia_articles

__all__ = ["DataSplits", "build_splits", "wikipedia_articles"]

"""Accuracy evaluation of SharQ and its baselines (issue 7). See docs/ACCURACY.md."""

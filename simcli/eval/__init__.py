"""Evaluation: exact metrics against analytic teachers (and, later, FID/IS feature-based metrics)."""

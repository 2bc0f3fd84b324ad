"""Sampling: the teacher's EDM Heun sampler, one-step generator sampling and per-seed random streams."""

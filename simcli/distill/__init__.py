"""The distillation engine: noise levels, losses, the two updates, the alternating loop, EMA, run set-up and resume, and the MLP fit to analytic teachers."""

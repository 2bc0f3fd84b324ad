"""The distillation engine: noise levels, losses, the alternating loop, EMA and checkpoints."""

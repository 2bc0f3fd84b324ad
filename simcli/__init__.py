"""simcli: one-step diffusion distillation with Score Implicit Matching (Luo et al., NeurIPS 2024)."""

__version__ = "0.1.0"

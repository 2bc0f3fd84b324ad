"""Per-method defaults: what changes from the SIM paper settings when the method is SiD or Diff-Instruct.

Sources: SIM (Luo et al. 2024, Table 5, Appendix B.2), SiD (Zhou et al. 2024, official CIFAR-10 runs),
Diff-Instruct (Luo et al. 2023, official code); see shared/docs/baselines-notes.md.
"""

from __future__ import annotations

from typing import Any

METHOD_DEFAULTS: dict[str, dict[str, Any]] = {
    # SIM: generator ln sigma ~ N(-3.5, 2.5^2) with no weighting; online EDM lognormal (eq. B.5-B.10).
    "sim": {
        "generator": {"noise": {"kind": "lognormal", "p_mean": -3.5, "p_std": 2.5}, "weighting": "none"},
        "online": {"noise": {"kind": "lognormal", "p_mean": -1.2, "p_std": 1.2}},
    },
    # SiD: generator sigma on the Karras grid with u ~ U(0, 0.8); alpha = 1.2; online as SIM.
    "sid": {
        "generator": {"noise": {"kind": "karras-uniform", "t_max": 800.0}, "weighting": "none"},
        "online": {"noise": {"kind": "lognormal", "p_mean": -1.2, "p_std": 1.2}},
        "loss": {"sid_alpha": 1.2},
    },
    # Diff-Instruct: EDM lognormal for both steps, no weighting beyond the implicit sigma^2 of its gradient.
    "di": {
        "generator": {"noise": {"kind": "lognormal", "p_mean": -1.2, "p_std": 1.2}, "weighting": "none"},
        "online": {"noise": {"kind": "lognormal", "p_mean": -1.2, "p_std": 1.2}},
    },
}

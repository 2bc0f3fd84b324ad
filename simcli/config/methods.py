"""Per-method defaults: what changes from the SIM paper settings when the method is SiD or Diff-Instruct.

Sources: SIM (Luo et al. 2024, Table 5, Appendix B.2), SiD (Zhou et al. 2024, official CIFAR-10 runs),
Diff-Instruct (Luo et al. 2023, official code); see shared/docs/baselines-notes.md. The baselines run as their
authors ran them: each setting below that is not in the papers is cited to its official file and flag
(mingyuanzhou/SiD at 01fbb13, pkulwj1994/diff_instruct at 0c37389).
"""

from __future__ import annotations

from typing import Any

METHOD_DEFAULTS: dict[str, dict[str, Any]] = {
    # SIM: generator ln sigma ~ N(-3.5, 2.5^2) with no weighting; online EDM lognormal (eq. B.5-B.10). No augmentation
    # (our choice: the paper does not mention any) and no dropout in the networks the generator step reads.
    "sim": {
        "generator": {
            "noise": {"kind": "lognormal", "p_mean": -3.5, "p_std": 2.5}, "weighting": "none", "sigma_init": 2.5,
            "score_dropout": "off",
        },
        "online": {"noise": {"kind": "lognormal", "p_mean": -1.2, "p_std": 1.2}, "augment_p": 0.0},
    },
    # SiD: generator sigma on the Karras grid with u ~ U(0, 0.8); alpha = 1.2; online as SIM. sid_train.py:
    # --init_sigma 2.5, --augment 0.12 (EDM's AugmentPipe on the fake-score step only, training/sid_loss.py);
    # sid_training_loop.py keeps the teacher and the fake score in eval() during the generator step.
    "sid": {
        "generator": {
            "noise": {"kind": "karras-uniform", "t_max": 800.0}, "weighting": "none", "sigma_init": 2.5,
            "score_dropout": "off",
        },
        "online": {"noise": {"kind": "lognormal", "p_mean": -1.2, "p_std": 1.2}, "augment_p": 0.12},
        "loss": {"sid_alpha": 1.2},
    },
    # Diff-Instruct: EDM lognormal for both steps, no weighting beyond the implicit sigma^2 of its gradient.
    # sigma_init 1.0: the README's recipe (--init_sigma 1.0); beware di_train.py's own default, 0.001 (10e-4).
    # --augment 0.12 (di_train.py; the AugmentPipe runs in the fake-score step, training/di_loss.py __call__).
    # DI_EDMLoss.gloss puts both score networks in train() and restores the CUDA RNG state between their calls.
    "di": {
        "generator": {
            "noise": {"kind": "lognormal", "p_mean": -1.2, "p_std": 1.2}, "weighting": "none", "sigma_init": 1.0,
            "score_dropout": "shared-mask",
        },
        "online": {"noise": {"kind": "lognormal", "p_mean": -1.2, "p_std": 1.2}, "augment_p": 0.12},
    },
}

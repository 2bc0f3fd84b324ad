"""Per-method defaults: what changes from the SIM paper settings when the method is SiD or Diff-Instruct.

Sources: SIM (Luo et al. 2024, Table 5, Appendix B.2), SiD (Zhou et al. 2024, official CIFAR-10 runs),
Diff-Instruct (Luo et al. 2023, official code), DMD2 (Yin et al. 2024, official code); see
shared/docs/baselines-notes.md. The baselines run as their authors ran them: each setting below that is not in the
papers is cited to its official file and flag (mingyuanzhou/SiD at 01fbb13, pkulwj1994/diff_instruct at 0c37389,
tianweiy/DMD2's EDM ImageNet-64 code, main/edm/, and its run experiments/imagenet/
imagenet_gan_classifier_genloss3e-3_diffusion1000_lr2e-6_scratch.sh, "the script" below).
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
    # DMD2: the distribution-matching gradient (Diff-Instruct's direction over mean|x0 - D_teacher|, averaged over the
    # pixels) at noise indices 20..980 of a 1000-level Karras grid (edm_guidance.py:69-70, :82-92); the fake score
    # (online model) by DSM with EDM's weights averaged over the pixels, at indices 0..999 (:138-161), five updates per
    # generator update (the script's --dfake_gen_update_ratio 5); the generator takes 80 z at sigma 80
    # (train_edm.py:475, --conditioning_sigma). Both networks: AdamW lr 2e-6 (the script), betas (0.9, 0.999),
    # weight decay 0.01 (train_edm.py:97-108), gradient norm clipped to 10 (:257, :285, :485). The warm-up: DMD2 steps
    # both schedulers once per iteration and process (train_edm.py:111-123, :265), so its 500 warm-up steps over the
    # script's 7 processes end after about 72 iterations: 72 fake-score updates, 14 generator updates. With --data,
    # its GAN term (simcli.distill.dmd2): classifier loss weight 1e-2, generator GAN weight 3e-3 (the script's
    # --cls_loss_weight, --gen_cls_loss_weight), from the first iteration, no value clipping. No augmentation, no
    # dropout in the score networks the generator step reads (dropout 0 in DMD2's networks: edm_network.py:11-12).
    "dmd2": {
        "generator": {
            "noise": {"kind": "karras-grid", "steps": 1000, "index_min": 20, "index_max": 980}, "weighting": "none",
            "sigma_init": 80.0, "score_dropout": "off",
            "optimizer": {"lr": 2e-6, "beta1": 0.9, "beta2": 0.999, "weight_decay": 0.01, "warmup_updates": 14,
                          "max_grad_norm": 10.0},
        },
        "online": {
            "noise": {"kind": "karras-grid", "steps": 1000, "index_min": 0, "index_max": 999}, "augment_p": 0.0,
            "updates_per_generator_update": 5,
            "optimizer": {"lr": 2e-6, "beta1": 0.9, "beta2": 0.999, "weight_decay": 0.01, "warmup_updates": 72,
                          "max_grad_norm": 10.0},
        },
        "adversarial": {"online_weight": 1e-2, "generator_weight": 3e-3, "generator_freeze_kimg": 0.0,
                        "generator_start_kimg": 0.0, "online_grad_clip": None},
    },
}

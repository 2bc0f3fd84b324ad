"""Named presets: partial specs layered over the method defaults (defaults < preset < file < flags).

`auto` picks the preset that fits the teacher (each kind of teacher names its preset in
simcli/teachers/registry.py): `gmm` for analytic mixtures, `digits` for the shipped digits teacher, for diffusers
text-to-image teachers their family's (`pixart` for PixArt-alpha and -Sigma; `sd3`, `flux-dev`, `flux-schnell`,
`sana`, `sd15`, `sdxl` from simcli.config.t2i_presets); for the official EDM teachers the preset of their dataset, `cifar10`, `ffhq64`
(edm-ffhq64, edm-ffhq64-ve), `afhq64` (edm-afhqv2-64, edm-afhqv2-64-ve) or `imagenet64` (edm-imagenet64), and for
EDM2's `edm2-img512` (ImageNet-512 latents) or `edm2-img64`, also for a local pickle under an official file name;
`cifar10` for any other network.

A preset's `by_method` entry holds settings that apply only to one method (layered right above the preset). The
dataset presets follow the authors' own runs of that dataset, each value cited to its file and line: settings of
the data, the network and the compute (batch, precision, EMA, duration, dropout; augmentation where the network
cannot take any) apply to every method; optimiser settings and augmentation are the method's, under `by_method`. Measured results are not written here (they drift): they
live in examples/digits/RESULTS.md, examples/digits/SPEED-OPTIONS.md and benchmarks/results/.
"""

from __future__ import annotations

from typing import Any

from simcli.config.t2i_presets import T2I_PRESETS

PRESETS: dict[str, dict[str, Any]] = {
    # The paper's CIFAR-10 settings (Table 5): Adam 1e-5, betas (0, 0.999), batch 256, sigma_init 2.5. SiD's
    # CIFAR-10 runs are the method defaults (mingyuanzhou/SiD@01fbb13 run_sid.sh:25-45: batch 256, lr 1e-5, fp32,
    # alpha 1.2; sid_train.py:70-72: EMA 0.5 Mimg, dropout 0.13 as the pickle records it, augment 0.12).
    # Diff-Instruct's README recipe, the one run its code documents, is batch 128 on one V100
    # (pkulwj1994/diff_instruct@0c37389 README.md:50: --batch 128; its --lr/--glr 1e-5, --init_sigma 1.0 and --fp16 0
    # are the method defaults).
    "cifar10": {
        "training": {"batch_size": 256, "duration_kimg": 200_000.0},
        "logging": {"status_every_kimg": 10.0, "snapshot_every_kimg": 500.0},
        "by_method": {"di": {"training": {"batch_size": 128}}},
    },
    # FFHQ 64x64 (edm-ffhq64, edm-ffhq64-ve): SiD's run "ffhq64", mingyuanzhou/SiD@01fbb13 run_sid.sh:100-125.
    # Every method: batch 512 (--batch 512, run_sid.sh:105) in micro-batches of 32 (--batch-gpu 32, :106); fp16
    # (--fp16 1, :117, which builds the networks with EDM's fp16 trunk, sid_train.py:196; simcli's fp16 is autocast
    # with dynamic loss scaling, the nearest it has); EMA half-life 500 kimg (--ema default 0.5 Mimg, sid_train.py:70
    # and :200) with ramp-up 0.05 (sid_training_loop.py:131); 500 Mimg (--duration 500, :124); a status line every
    # 10 kimg and a snapshot every 50 ticks, 500 kimg (--tick 10, --snap 50, :112-113). Dropout 0.05 for the generator
    # and the online model (--dropout 0.05, :120; training.dropout, which the pickle records too); channel_mult 1,2,2,2
    # (--cres, :122) is the pickle's.
    # SiD (by_method.sid): lr 1e-5 for both networks (--lr, --glr, :115-116), the generator's Adam beta1 0.9
    # (--g_beta1 0.9, :123), Adam eps 1e-6 (sid_train.py:152-153 with --fp16), augmentation 0.15 (--augment 0.15,
    # :121), alpha 1.2 (--alpha 1.2, :102).
    # SIM and Diff-Instruct have no published FFHQ, AFHQ or ImageNet settings (the SIM paper gives settings for
    # CIFAR-10 and text-to-image only, shared/docs/sim-method.md section 5; diff_instruct's di_train.py:215-220 loads
    # only the CIFAR-10 teachers). They take SiD's learning rate for the dataset (our choice: the one tuned for this
    # data and batch, and one lr for every method keeps comparisons like-for-like) and keep their own Adam betas
    # (0, 0.999) (SIM: Table 5 and Appendix B.3 alike), eps 1e-8, noise and augmentation (SIM none, DI 0.12:
    # di_train.py:76).
    "ffhq64": {
        "ema": {"halflife_kimg": 500.0, "rampup_ratio": 0.05},
        "training": {"batch_size": 512, "batch_gpu": 32, "duration_kimg": 500_000.0, "precision": "fp16", "dropout": 0.05},
        "logging": {"status_every_kimg": 10.0, "snapshot_every_kimg": 500.0},
        "by_method": {
            "sid": {
                "generator": {"optimizer": {"lr": 1e-5, "beta1": 0.9, "eps": 1e-6}},
                "online": {"optimizer": {"lr": 1e-5, "eps": 1e-6}, "augment_p": 0.15},
                "loss": {"sid_alpha": 1.2},
            },
            "sim": {"generator": {"optimizer": {"lr": 1e-5}}, "online": {"optimizer": {"lr": 1e-5}}},
            "di": {"generator": {"optimizer": {"lr": 1e-5}}, "online": {"optimizer": {"lr": 1e-5}}},
        },
    },
    # AFHQv2 64x64 (edm-afhqv2-64, edm-afhqv2-64-ve): SiD's run "afhq64-v2", run_sid.sh:127-151 (SiD@01fbb13).
    # Every method: as ffhq64: batch 512 (:132), micro-batches of 32 (:133), fp16 (:144), EMA 500 kimg (the --ema
    # default, sid_train.py:70), 500 Mimg (:150), --tick 10 and --snap 50 (:139-140).
    # SiD (by_method.sid): lr 5e-6 for both networks (--lr, --glr, :142-143), generator beta1 0 (no --g_beta1: its
    # default, sid_train.py:103), eps 1e-6 (sid_train.py:152-153), augmentation 0.15 (:148), alpha 1.0 (--alpha 1.0,
    # :129; FFHQ and ImageNet run 1.2).
    # SIM and Diff-Instruct: SiD's lr 5e-6, their own betas, eps, noise and augmentation (see ffhq64).
    # Dropout 0.05 for the generator and the online model (--dropout 0.05, :147; sid_train.py:196 builds the networks
    # with it before sid_training_loop.py:177-184 copies the weights in), where the EDM AFHQv2 pickle records 0.25.
    "afhq64": {
        "ema": {"halflife_kimg": 500.0, "rampup_ratio": 0.05},
        "training": {"batch_size": 512, "batch_gpu": 32, "duration_kimg": 500_000.0, "precision": "fp16", "dropout": 0.05},
        "logging": {"status_every_kimg": 10.0, "snapshot_every_kimg": 500.0},
        "by_method": {
            "sid": {
                "generator": {"optimizer": {"lr": 5e-6, "beta1": 0.0, "eps": 1e-6}},
                "online": {"optimizer": {"lr": 5e-6, "eps": 1e-6}, "augment_p": 0.15},
                "loss": {"sid_alpha": 1.0},
            },
            "sim": {"generator": {"optimizer": {"lr": 5e-6}}, "online": {"optimizer": {"lr": 5e-6}}},
            "di": {"generator": {"optimizer": {"lr": 5e-6}}, "online": {"optimizer": {"lr": 5e-6}}},
        },
    },
    # ImageNet 64x64, class-conditional (edm-imagenet64): SiD's run "imagenet64-cond", run_sid.sh:73-98 (SiD@01fbb13).
    # Every method: batch 8192 (--batch 8192, :79) in micro-batches of 16 (--batch-gpu 16, :80); fp16 (--fp16 1,
    # :91; the ADM pickle has its own fp16 trunk, which simcli's fp16 autocast replaces); EMA half-life 2000 kimg
    # (--ema 2 Mimg, :96; sid_train.py:200) with ramp-up 0.05 (sid_training_loop.py:131); 1000 Mimg (--duration 1000,
    # :97); a status line every 20 kimg and a snapshot every 50 ticks, 1000 kimg (--tick 20, --snap 50, :86-87); no
    # augmentation for any method (--augment 0, :95: the ADM network has no augment_dim, so none could apply).
    # Dropout 0.1 for the generator and the online model (--dropout 0.1, :94; the pickle records it too).
    # SiD (by_method.sid): lr 4e-6 for both networks (--lr, --glr, :89-90), eps 1e-6 (sid_train.py:152-153), alpha
    # 1.2 (:75). SIM and Diff-Instruct: SiD's lr 4e-6, their own betas, eps and noise (see ffhq64).
    # SiD's class labels come from the ImageNet training set (sid_training_loop.py:298 and :324); simcli draws them
    # uniformly (simcli/distill/conditions.py ClassLabels).
    "imagenet64": {
        "online": {"augment_p": 0.0},
        "ema": {"halflife_kimg": 2000.0, "rampup_ratio": 0.05},
        "training": {"batch_size": 8192, "batch_gpu": 16, "duration_kimg": 1_000_000.0, "precision": "fp16",
                     "dropout": 0.1},
        "logging": {"status_every_kimg": 20.0, "snapshot_every_kimg": 1000.0},
        "by_method": {
            "sid": {
                "generator": {"optimizer": {"lr": 4e-6, "eps": 1e-6}},
                "online": {"optimizer": {"lr": 4e-6, "eps": 1e-6}},
                "loss": {"sid_alpha": 1.2},
            },
            "sim": {"generator": {"optimizer": {"lr": 4e-6}}, "online": {"optimizer": {"lr": 4e-6}}},
            "di": {"generator": {"optimizer": {"lr": 4e-6}}, "online": {"optimizer": {"lr": 4e-6}}},
        },
    },
    # EDM2 ImageNet-512 in latent space (edm2-img512-xs ... -xxl): SiDA's EDM2 runs, mingyuanzhou/SiD@a5510fdf (branch
    # sida) run_sida_edm2.sh:56-95 ("imagenet512-xs"; the other sizes repeat it). Every method: batch 2048 (--batch
    # 2048, :71) in micro-batches of 32 (--batch-gpu: 64 for XS and S, :72 and :110; 32 for M and L, :146 and :182; 16
    # for XL, :218; 2 for XXL, :254: give --batch-gpu for the large sizes, or --sharding fsdp); fp16 (--fp16 1, :84;
    # simcli's fp16 is autocast with loss scaling); EMA half-life 2000 kimg (--ema 2 Mimg, :89) with ramp-up 0.05
    # (sida_training_edm2/sida_training_loop_edm2.py:251); 200 Mimg (--duration 200, :87; XXL 100, :269); a status line
    # every 10 kimg and a snapshot every 50 ticks, 500 kimg (--tick 10, --snap 50, :79-80); no augmentation (--augment
    # 0, :88); the online model's noise ln sigma ~ N(-0.4, 1.0), EDM2's own training distribution (sida_edm2_train.py:
    # 222-224 for every EDM2 size; edm2/train_edm2.py:27-32). Dropout is the
    # pickle's (0 for XS and S, 0.1 above), as SiDA sets it per size (sida_edm2_train.py:222-262). No guidance: SiDA
    # distills the unguided teacher.
    # SiD (by_method.sid): lr 5e-5 for both networks (--lr, --glr, :82-83), Adam betas (0, 0.999) and eps 1e-6 with
    # fp16 (sida_edm2_train.py:199-200), alpha 1 (--alpha 1, :68); sigma_init 2.5 and t_max 800 (--init_sigma 2.5,
    # --tmax 800, :69-70) are the method's defaults.
    # SiD also weights by the learned uncertainty u(sigma) of EDM2's networks, as SiD's and SiDA's EDM2 runs do with
    # --return_logvar 1 (run_sid_edm2.sh for every size, :63, :99, :133, :167, :201, :235; run_sida_edm2.sh :66, :140,
    # :176, :212, :248): the online model by EDM2's loss (lambda / e^u) ||D - x0||^2 + C*H*W*u (online.weighting
    # uncertainty; sida_loss_edm2.py:493, and :331 with SiDA's discriminator loss divided by e^u, :341-342), the
    # generator's loss (SiDA's GAN term too) divided by e^u of the online model (generator.uncertainty_scaling;
    # :458-459, :276-277, :283-284). SiDA's S run differs: --return_logvar 0 (run_sida_edm2.sh:104, and
    # --force_normalization 0, :103); to follow it with --data on edm2-img512-s, --set online.weighting=edm --set
    # generator.uncertainty_scaling=false.
    # SIM and Diff-Instruct: SiD's lr 5e-5 for the dataset, their own betas and noise (see ffhq64), eps 1e-6 (fp16);
    # their own weighting (EDM's lambda for the online model, no u): no run of theirs uses the uncertainty (both
    # settings take them, to try it).
    "edm2-img512": {
        "online": {"augment_p": 0.0, "noise": {"kind": "lognormal", "p_mean": -0.4, "p_std": 1.0}},
        "ema": {"halflife_kimg": 2000.0, "rampup_ratio": 0.05},
        "training": {"batch_size": 2048, "batch_gpu": 32, "duration_kimg": 200_000.0, "precision": "fp16"},
        "logging": {"status_every_kimg": 10.0, "snapshot_every_kimg": 500.0},
        "by_method": {
            "sid": {
                "generator": {"optimizer": {"lr": 5e-5, "beta1": 0.0, "eps": 1e-6}, "uncertainty_scaling": True},
                "online": {"optimizer": {"lr": 5e-5, "eps": 1e-6}, "weighting": "uncertainty"},
                "loss": {"sid_alpha": 1.0},
            },
            "sim": {"generator": {"optimizer": {"lr": 5e-5, "eps": 1e-6}}, "online": {"optimizer": {"lr": 5e-5, "eps": 1e-6}}},
            "di": {"generator": {"optimizer": {"lr": 5e-5, "eps": 1e-6}}, "online": {"optimizer": {"lr": 5e-5, "eps": 1e-6}}},
        },
    },
    # Analytic mixtures on CPU: small MLPs learn in minutes at a larger learning rate and a short EMA; two
    # online updates per generator update (the ratio of the paper's listing) track the generator more closely.
    "gmm": {
        "generator": {"optimizer": {"lr": 1e-4}},
        # No augmentation for any method: EDM's pipeline transforms images, not vectors.
        "online": {"optimizer": {"lr": 1e-4}, "updates_per_generator_update": 2, "augment_p": 0.0},
        "ema": {"halflife_kimg": 20.0, "rampup_ratio": 0.05},
        "training": {"batch_size": 256, "duration_kimg": 512.0},
        # The exact metrics of the EMA generator (simcli.eval.during_training) with every snapshot, so that `simcli
        # compare` has numbers and generator-best.safetensors is kept. With 5,000 samples (one batch) an evaluation
        # costs about 1.3 s of one core (mostly MMD^2), and the four of a 512 kimg ring8 run added 6% to its CPU time
        # with the teacher fit (--threads 1: 105.0 s against 98.8 s, and 101.6 s against 95.9 s); 10,000 samples
        # would cost about 4x as much per evaluation.
        "logging": {"status_every_kimg": 25.6, "snapshot_every_kimg": 128.0, "eval_every_kimg": 128.0},
        "evaluation": {"num_samples": 5000, "batch_size": 5000},
        # SIM's generator noise of the paper's text-to-image runs (Appendix B.3), ln sigma ~ N(-2, 2^2): the CIFAR-10
        # setting N(-3.5, 2.5^2) puts half its mass below sigma = exp(-3.5) = 0.03, under the mixtures' component
        # scale. Results with this preset: benchmarks/results/gmm_table.md; `python benchmarks/gmm_table.py --methods
        # "SIM pseudo-huber" --set generator.noise.p_mean=-3.5 --set generator.noise.p_std=2.5 --out <prefix>`
        # measures the CIFAR-10 setting.
        "by_method": {"sim": {"generator": {"noise": {"kind": "lognormal", "p_mean": -2.0, "p_std": 2.0}}}},
    },
    # The shipped digits teacher on a laptop CPU (the README quick start): the paper's CIFAR-10 settings at batch 128
    # and lr 1e-4, 50 kimg, the digits FID against the training digits every 10 kimg. Two online updates per
    # generator update (the paper listing's ratio). Measured: run times and FIDs of this preset per method in
    # examples/digits/RESULTS.md; two online updates (its sim-fp32 row) against one (sim-fresh-u1) in
    # examples/digits/SPEED-OPTIONS.md.
    "digits": {
        "generator": {"optimizer": {"lr": 1e-4}},
        # The digits network has no augment_dim, so SiD's and DI's augmentation cannot apply (as in SiD's ImageNet runs).
        "online": {"optimizer": {"lr": 1e-4}, "augment_p": 0.0, "updates_per_generator_update": 2},
        "ema": {"halflife_kimg": 5.0, "rampup_ratio": 0.05},
        "training": {"batch_size": 128, "duration_kimg": 50.0},
        "logging": {"status_every_kimg": 2.0, "eval_every_kimg": 10.0, "snapshot_every_kimg": 10.0},
        "evaluation": {"backend": "digits", "num_samples": 2000, "batch_size": 500},
        # DMD2 keeps its own two-time-scale ratio, five online updates per generator update (simcli.config.methods).
        "by_method": {"dmd2": {"online": {"updates_per_generator_update": 5}}},
    },
    # The paper's text-to-image run, SIM-DiT-600M (Appendix B.3): Adam 5e-6, betas (0, 0.999) for both networks,
    # ln sigma ~ N(-2, 2^2) for both steps truncated to PixArt's noise range [0.01, 156.6155] (eq. B.14), both loss
    # weights 1, bf16, gradient checkpointing, batch 1024 by accumulation (4 GPUs x 8 rounds x 32), about 16k
    # iterations. No augmentation (latents), sigma_init 2.5.
    "pixart": {
        "generator": {"optimizer": {"lr": 5e-6, "beta1": 0.0, "beta2": 0.999}, "sigma_init": 2.5, "weighting": "none",
                      "noise": {"kind": "lognormal", "p_mean": -2.0, "p_std": 2.0, "sigma_min": 0.01, "sigma_max": 156.6155}},
        "online": {"optimizer": {"lr": 5e-6, "beta1": 0.0, "beta2": 0.999}, "augment_p": 0.0, "weighting": "none",
                   "noise": {"kind": "lognormal", "p_mean": -2.0, "p_std": 2.0, "sigma_min": 0.01, "sigma_max": 156.6155}},
        "ema": {"halflife_kimg": 500.0, "rampup_ratio": 0.05},
        "training": {"batch_size": 1024, "batch_gpu": 32, "duration_kimg": 16384.0, "precision": "bf16",
                     "activation_checkpointing": True},
        "logging": {"status_every_kimg": 10.24, "snapshot_every_kimg": 1024.0, "grid_samples": 16},
    },
    # A seconds-long smoke run: tiny networks, a short fit, a handful of iterations.
    "tiny": {
        "network": {"hidden_dim": 32, "num_layers": 2, "embedding_dim": 8},
        "teacher_fit": {"steps": 50, "batch_size": 256},
        "generator": {"optimizer": {"lr": 1e-3}},
        "online": {"optimizer": {"lr": 1e-3}},
        "ema": {"halflife_kimg": 0.5, "rampup_ratio": None},
        "training": {"batch_size": 32, "duration_steps": 20},
        "logging": {"status_every_kimg": 0.16, "snapshot_every_kimg": 0.32},
    },
}
PRESETS.update(T2I_PRESETS)  # the text-to-image families beyond PixArt-alpha: sd3, flux-dev, flux-schnell, sana, sd15, sdxl


def _layered(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """base with extra's leaves put over it (mappings merged key by key, other values replaced), both left as they are."""
    out = dict(base)
    for key, value in extra.items():
        out[key] = _layered(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) else value
    return out


# The digits teacher with real data (--data; `auto` picks it then, simcli.config.resolve): the digits preset with
# SiDA's adversarial term set for runs of this length. SiDA's schedule (the generator still for 100 kimg, its
# adversarial loss from 200 kimg) outlasts a digits run, so both start at once; with them on from the start the
# discriminator must learn faster than the generator moves, hence online_weight 10, and the generator's loss, which
# SiD's normaliser w(x) makes large at SIM's small noise levels, at 1e-3 (1e-2 broke the run, 1e-4 gained less).
# Measured in examples/digits/RESULTS.md, part (f). DMD2 keeps its own weights and ratio (simcli.config.methods).
DIGITS_DATA_KIMG = 120.0
"""The digits-data preset's duration: within 30 minutes on 2 CPU cores (README, "Beating the teacher")."""
_SIDA_DIGITS = {"adversarial": {"online_weight": 10.0, "generator_weight": 1e-3}}
PRESETS["digits-data"] = _layered(PRESETS["digits"], {
    "training": {"duration_kimg": DIGITS_DATA_KIMG},
    "adversarial": {"generator_freeze_kimg": 0.0, "generator_start_kimg": 0.0},
    "by_method": {"sim": _SIDA_DIGITS, "sid": _SIDA_DIGITS, "di": _SIDA_DIGITS},
})

# EDM2 ImageNet-64 (pixels; edm2-img64-*): no distillation run of these networks is published. They take the
# ImageNet-512 run's settings, with the online model's noise from EDM2's own ImageNet-64 training, ln sigma ~
# N(-0.8, 1.6) (edm2/train_edm2.py:33-37); SiD's weighting by their learned uncertainty too.
PRESETS["edm2-img64"] = _layered(PRESETS["edm2-img512"], {"online": {"noise": {"kind": "lognormal", "p_mean": -0.8,
                                                                               "p_std": 1.6}}})

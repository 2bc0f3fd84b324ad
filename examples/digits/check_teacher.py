"""Check the digits teacher with the digits classifier's 64-d features: FID floor, Heun and one-step FID, losses.

    .venv/bin/python examples/digits/check_teacher.py [--teacher PATH] [--classifier PATH] [--n 2000]
        [--seed-sets 3] [--grid /tmp/digits_teacher_grid.png] [--json PATH]

Reports (a) FID of the 300 held-out digits against the 1,497 training digits (the floor for this many
images), (b) FID of n teacher samples (EDM Heun, 18 steps = 35 NFE; sample i drawn from SeedRNG seed
first_seed + i: latent first, then a uniform class label, as simcli/sampling/run.py does) against train and
against held-out, for several disjoint seed sets, (c) the same for the untrained one-step generator
D(2.5 z; 2.5) carrying the teacher's weights, and (d) the teacher's EDM denoising loss on held-out and
train at a fixed grid of sigmas with seeded noise. All images are compared as uint8, features in float64.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from digits_common import ASSETS, NUM_THREADS, load_classifier, load_teacher, quantize
from PIL import Image

from simcli.data.digits import load_digits_split
from simcli.distill.losses import edm_weight
from simcli.eval import fid_math
from simcli.eval.stats import FeatureStats
from simcli.sampling.heun import edm_heun_sample
from simcli.sampling.seeds import SeedRNG

SIGMA_INIT = 2.5
P_MEAN, P_STD = -1.2, 1.2


def frechet_distance(f1: np.ndarray, f2: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to two feature sets [N, D], by simcli's own float64 code."""
    a = FeatureStats.from_features(np.asarray(f1, np.float64))
    b = FeatureStats.from_features(np.asarray(f2, np.float64))
    return fid_math.frechet_distance(a.mu, a.sigma, b.mu, b.sigma)


@torch.no_grad()
def features(classifier: torch.nn.Module, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """64-d features (float64 [N, 64]) and predicted classes [N] of float images [N, 1, 8, 8] in [-1, 1]."""
    feats, logits = classifier(quantize(x))
    return feats.to(torch.float64).numpy(), logits.argmax(1).numpy()


@torch.no_grad()
def draw(net: torch.nn.Module, n: int, first_seed: int, heun: bool, batch: int = 500,
         classes: np.ndarray | None = None) -> tuple[torch.Tensor, np.ndarray]:
    """n samples (Heun 18 steps, or one step D(2.5 z; 2.5)) from seeds first_seed.., and their classes."""
    xs, ys = [], []
    for start in range(first_seed, first_seed + n, batch):
        seeds = list(range(start, min(start + batch, first_seed + n)))
        rng = SeedRNG(seeds)
        latents = rng.randn((1, 8, 8))
        y = rng.randint(10) if classes is None else torch.from_numpy(classes[start - first_seed :][: len(seeds)])
        onehot = torch.nn.functional.one_hot(y, 10).to(torch.float32)
        if heun:
            x = edm_heun_sample(net, latents, class_labels=onehot, num_steps=18, rng=rng)
        else:
            x = net(SIGMA_INIT * latents, torch.full((len(seeds),), SIGMA_INIT), onehot)
        xs.append(x)
        ys.append(y.numpy())
    return torch.cat(xs), np.concatenate(ys)


@torch.no_grad()
def fixed_sigma_loss(net: torch.nn.Module, images: np.ndarray, labels: np.ndarray, num_sigmas: int = 16,
                     repeats: int = 4, seed: int = 123) -> dict[str, float]:
    """Mean EDM loss edm_weight(sigma) * sum_pixels (D - x0)^2 over a fixed sigma grid and seeded noise.

    The grid is exp(P_MEAN + P_STD * Phi^-1((k + 0.5) / num_sigmas)), k = 0..num_sigmas-1 (the training
    distribution's quantiles), so the mean estimates the expected training loss; noise from one
    torch.Generator(seed), `repeats` draws per image and sigma.
    """
    from statistics import NormalDist

    q = [NormalDist().inv_cdf((k + 0.5) / num_sigmas) for k in range(num_sigmas)]
    sigmas = torch.tensor(q, dtype=torch.float64).mul(P_STD).add(P_MEAN).exp().to(torch.float32)
    x0 = torch.from_numpy(images)
    onehot = torch.nn.functional.one_hot(torch.from_numpy(labels), 10).to(torch.float32)
    gen = torch.Generator().manual_seed(seed)
    per_sigma = []
    for sigma in sigmas:
        vals = []
        for _ in range(repeats):
            eps = torch.randn(x0.shape, generator=gen)
            d = net(x0 + sigma * eps, sigma.expand(len(x0)), onehot)
            vals.append(edm_weight(sigma, 0.5) * (d - x0).pow(2).flatten(1).sum(1))
        per_sigma.append(float(torch.cat(vals).to(torch.float64).mean()))
    mean = float(np.mean(per_sigma))
    return {"per_sample": mean, "per_pixel": mean / 64,
            "by_sigma": {f"{float(s):.4g}": round(v, 4) for s, v in zip(sigmas, per_sigma, strict=True)}}


def save_class_grid(net: torch.nn.Module, path: Path, first_seed: int = 0, scale: int = 4) -> Path:
    """10x10 PNG of Heun samples, row r = class r, seeds first_seed..first_seed+99, upscaled `scale` times."""
    classes = np.repeat(np.arange(10), 10)
    x, _ = draw(net, 100, first_seed, heun=True, classes=classes)
    u = quantize(x)[:, 0].numpy()  # [100, 8, 8]
    pad, cell = 1, 8 + 1
    canvas = np.full((10 * cell + pad, 10 * cell + pad), 255, np.uint8)
    for i, img in enumerate(u):
        r, c = divmod(i, 10)
        canvas[pad + r * cell : pad + r * cell + 8, pad + c * cell : pad + c * cell + 8] = img
    Image.fromarray(np.kron(canvas, np.ones((scale, scale), np.uint8)), "L").save(path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--teacher", type=Path, default=ASSETS / "teacher.safetensors")
    parser.add_argument("--classifier", type=Path, default=ASSETS / "classifier.safetensors")
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--seed-sets", type=int, default=3, help="disjoint seed sets of n samples each")
    parser.add_argument("--grid", type=Path, default=Path("/tmp/digits_teacher_grid.png"))
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(NUM_THREADS)
    t0 = time.time()
    classifier, teacher = load_classifier(args.classifier), load_teacher(args.teacher)
    train, test = load_digits_split()
    f_train, p_train = features(classifier, torch.from_numpy(train.images))
    f_test, p_test = features(classifier, torch.from_numpy(test.images))
    out: dict[str, object] = {
        "classifier_acc": {"train": float((p_train == train.labels).mean()), "test": float((p_test == test.labels).mean())},
        "fid_floor_test_vs_train": frechet_distance(f_test, f_train),
    }
    print(f"classifier acc train {out['classifier_acc']['train']:.4f} held-out {out['classifier_acc']['test']:.4f}")
    print(f"(a) FID held-out (300) vs train (1497), the floor: {out['fid_floor_test_vs_train']:.3f}", flush=True)
    for kind, heun in (("heun18", True), ("one_step_untrained", False)):
        rows = []
        for k in range(args.seed_sets if heun else 1):
            x, y = draw(teacher, args.n, k * args.n, heun)
            f, pred = features(classifier, x)
            row = {"first_seed": k * args.n, "fid_train": frechet_distance(f, f_train),
                   "fid_test": frechet_distance(f, f_test), "class_acc": float((pred == y).mean()),
                   "sec": round(time.time() - t0, 1)}
            rows.append(row)
            print(f"({'b' if heun else 'c'}) {kind} seeds {row['first_seed']}..+{args.n}: FID vs train "
                  f"{row['fid_train']:.3f}  vs held-out {row['fid_test']:.3f}  class acc {row['class_acc']:.4f}",
                  flush=True)
        out[kind] = rows
    for name, split in (("test", test), ("train", train)):
        loss = fixed_sigma_loss(teacher, split.images, split.labels)
        out[f"loss_{name}"] = loss
        print(f"(d) EDM loss on {name}: {loss['per_sample']:.4f} per sample, {loss['per_pixel']:.4f} per pixel",
              flush=True)
    print("    by sigma (held-out):", out["loss_test"]["by_sigma"])
    print(f"grid: {save_class_grid(teacher, args.grid)}  total {time.time() - t0:.0f}s")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()

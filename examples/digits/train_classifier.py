"""Train the digits FID feature network (simcli.nets.digits_classifier.DigitsClassifier) and save it.

    .venv/bin/python examples/digits/train_classifier.py [--out PATH] [--epochs N] [--seed S]

Trains on the 1,497-image training split of simcli.data.digits, fed as uint8 images (EDM's conversion of
the [-1, 1] images) with random +-1 pixel shifts, reports accuracy on the 300 held-out digits and writes
simcli/assets/digits/classifier.safetensors. Deterministic: fixed seeds, deterministic kernels and
torch.set_num_threads(2); the file's bytes reproduce with the same torch version and thread count.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from digits_common import ASSETS, NUM_THREADS, quantize, save_safetensors, seed_everything, sha256
from torch.nn import functional as F

from simcli.data.digits import load_digits_split
from simcli.nets.digits_classifier import DigitsClassifier

ARCH = {"class_name": "DigitsClassifier", "channels": [32, 64, 64], "feature_dim": 64, "num_classes": 10,
        "dropout": 0.2}


def random_shift(u: torch.Tensor, gen: torch.Generator, max_shift: int = 1) -> torch.Tensor:
    """Shift each uint8 image [B, 1, 8, 8] by up to max_shift pixels each way, filling with background 0."""
    b, _, h, w = u.shape
    padded = F.pad(u, (max_shift,) * 4)  # zero = the uint8 background
    dy, dx = (torch.randint(0, 2 * max_shift + 1, (b,), generator=gen) for _ in range(2))
    rows = (dy[:, None] + torch.arange(h)[None])  # [B, H]
    cols = (dx[:, None] + torch.arange(w)[None])  # [B, W]
    idx_b = torch.arange(b)[:, None, None]
    return padded[:, 0][idx_b, rows[:, :, None], cols[:, None, :]].unsqueeze(1)


@torch.no_grad()
def accuracy(net: DigitsClassifier, u: torch.Tensor, labels: torch.Tensor) -> float:
    net.eval()
    return float((net(u)[1].argmax(1) == labels).to(torch.float64).mean())


def train(epochs: int, seed: int, batch: int = 64, lr: float = 2e-3) -> tuple[DigitsClassifier, float, float]:
    """Train the classifier; returns it (eval mode), its held-out and its training accuracy."""
    seed_everything(seed)
    train_split, test_split = load_digits_split()
    u_train = quantize(torch.from_numpy(train_split.images))
    y_train = torch.from_numpy(train_split.labels)
    u_test = quantize(torch.from_numpy(test_split.images))
    y_test = torch.from_numpy(test_split.labels)
    net = DigitsClassifier(**{k: v for k, v in ARCH.items() if k != "class_name"})
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    steps_per_epoch = -(-len(y_train) // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps_per_epoch)
    gen = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        net.train()
        perm = torch.randperm(len(y_train), generator=gen)
        total = 0.0
        for start in range(0, len(perm), batch):
            idx = perm[start : start + batch]
            u = random_shift(u_train[idx], gen)
            loss = F.cross_entropy(net(u)[1], y_train[idx], label_smoothing=0.05)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
        if (epoch + 1) % 5 == 0 or epoch + 1 == epochs:
            print(f"epoch {epoch + 1:3d}  loss {total / len(y_train):.4f}  held-out acc "
                  f"{accuracy(net, u_test, y_test):.4f}", flush=True)
    return net.eval(), accuracy(net, u_test, y_test), accuracy(net, u_train, y_train)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=ASSETS / "classifier.safetensors")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    t0 = time.time()
    net, test_acc, train_acc = train(args.epochs, args.seed)
    n_params = sum(p.numel() for p in net.parameters())
    meta = {
        "architecture": ARCH,
        "test_accuracy": test_acc,
        "train_accuracy": train_acc,
        "num_params": n_params,
        "input": "uint8 [B, 1, 8, 8], (x * 127.5 + 128).clip(0, 255) of digits scaled x / 8 - 1",
        "features": "64-d pre-activation of the feature layer (output 0 of forward)",
        "data": "sklearn load_digits, simcli.data.digits split (seed 0, 1497 train / 300 held-out)",
        "train_script": "examples/digits/train_classifier.py",
        "train_args": {"epochs": args.epochs, "seed": args.seed},
        "torch_version": torch.__version__,
        "num_threads": NUM_THREADS,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_safetensors(net.state_dict(), args.out, "simcli-classifier/1", meta)
    print(f"params {n_params}  held-out acc {test_acc:.4f}  train acc {train_acc:.4f}  "
          f"{time.time() - t0:.1f}s")
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes, sha256 {sha256(args.out)})")


if __name__ == "__main__":
    main()

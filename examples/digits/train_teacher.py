"""Train the digits teacher: a class-conditional EDMPrecond + SongUNet (about 1.03M parameters) on 8x8 digits.

    .venv/bin/python examples/digits/train_teacher.py [--out PATH] [--kimg 360] [--seed 0] [--warmup-kimg 0]

EDM training (Karras et al. 2022): ln sigma ~ N(-1.2, 1.2^2), loss lambda(sigma) ||D(x0 + sigma eps; sigma, y)
- x0||^2 summed over the 64 pixels and averaged over the batch, lambda = simcli.distill.losses.edm_weight
with sigma_data 0.5; Adam(lr 6e-4, betas (0.9, 0.999)), batch 128 drawn by epoch permutations of the
1,497-image training split with one seeded torch.Generator (which also draws sigma and the noise), float32,
torch.set_num_threads(2). An EMA of the weights (half-life --ema-kimg, ramped up as 5% of the images seen,
as EDM does) is what gets saved, to simcli/assets/digits/teacher.safetensors. The bytes reproduce with
the same torch version and thread count.
"""

from __future__ import annotations

import argparse
import copy
import math
import time
from pathlib import Path

import torch
from digits_common import ASSETS, NUM_THREADS, save_safetensors, seed_everything, sha256

from simcli.data.digits import load_digits_split
from simcli.distill.losses import edm_weight
from simcli.nets.edm_precond import EDMPrecond

SIGMA_DATA = 0.5
P_MEAN, P_STD = -1.2, 1.2
INIT_KWARGS = {
    "img_resolution": 8, "img_channels": 1, "label_dim": 10, "use_fp16": False, "sigma_data": SIGMA_DATA,
    "model_type": "SongUNet", "augment_dim": 0, "model_channels": 32, "channel_mult": [1, 2],
    "channel_mult_emb": 4, "num_blocks": 2, "attn_resolutions": [4], "dropout": 0.1, "label_dropout": 0,
    "embedding_type": "positional", "channel_mult_noise": 1, "encoder_type": "standard",
    "decoder_type": "standard", "resample_filter": [1, 1],
}


def edm_loss(net: EDMPrecond, x0: torch.Tensor, onehot: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Per-sample EDM loss [B]: edm_weight(sigma) * sum over pixels of (D(x0 + sigma eps; sigma, y) - x0)^2."""
    sigma = (torch.randn(x0.shape[0], 1, 1, 1, generator=gen) * P_STD + P_MEAN).exp()  # [B, 1, 1, 1]
    eps = torch.randn(x0.shape, generator=gen)
    denoised = net(x0 + sigma * eps, sigma, onehot)
    return edm_weight(sigma.flatten(), SIGMA_DATA) * (denoised - x0).pow(2).flatten(1).sum(1)


class BatchStream:
    """Batches of training indices: consecutive slices of seeded epoch permutations (an epoch may straddle)."""

    def __init__(self, n: int, batch: int, gen: torch.Generator):
        self.n, self.batch, self.gen = n, batch, gen
        self.buffer = torch.empty(0, dtype=torch.int64)

    def next(self) -> torch.Tensor:
        while len(self.buffer) < self.batch:
            self.buffer = torch.cat([self.buffer, torch.randperm(self.n, generator=self.gen)])
        idx, self.buffer = self.buffer[: self.batch], self.buffer[self.batch :]
        return idx


@torch.no_grad()
def ema_update(ema: torch.nn.Module, net: torch.nn.Module, beta: float) -> None:
    for p_ema, p in zip(ema.parameters(), net.parameters(), strict=True):
        p_ema.lerp_(p.detach(), 1 - beta)
    for b_ema, b in zip(ema.buffers(), net.buffers(), strict=True):
        b_ema.copy_(b)


def train(args: argparse.Namespace) -> tuple[EDMPrecond, dict[str, float]]:
    """Train; returns the EMA network (eval mode) and a summary."""
    seed_everything(args.seed)
    train_split, _ = load_digits_split()
    images = torch.from_numpy(train_split.images)  # [1497, 1, 8, 8] in [-1, 1]
    onehot = torch.nn.functional.one_hot(torch.from_numpy(train_split.labels), 10).to(torch.float32)
    net = EDMPrecond(**INIT_KWARGS).train()
    ema = copy.deepcopy(net).eval().requires_grad_(False)
    opt = torch.optim.Adam(net.parameters(), lr=args.lr, betas=(0.9, 0.999), eps=1e-8)
    gen = torch.Generator().manual_seed(args.seed)
    stream = BatchStream(len(images), args.batch, gen)
    total_steps = math.ceil(args.kimg * 1000 / args.batch)
    t0, next_report, window = time.time(), 10.0, []
    for step in range(total_steps):
        nimg = step * args.batch
        lr_scale = min(1.0, nimg / (args.warmup_kimg * 1000)) if args.warmup_kimg > 0 else 1.0
        for group in opt.param_groups:
            group["lr"] = args.lr * max(lr_scale, 1e-8)
        idx = stream.next()
        loss = edm_loss(net, images[idx], onehot[idx], gen).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        nimg += args.batch
        halflife = min(args.ema_kimg * 1000, nimg * args.ema_rampup)
        ema_update(ema, net, 0.5 ** (args.batch / max(halflife, 1e-8)))
        window.append(float(loss.detach()))
        kimg = nimg / 1000
        if kimg >= next_report or step == total_steps - 1:
            mean = sum(window) / len(window)
            print(f"kimg {kimg:7.1f}  loss {mean:.4f} ({mean / 64:.4f}/pixel)  sec {time.time() - t0:7.1f}", flush=True)
            final_loss, window = mean, []
            next_report += 10.0
    summary = {"kimg": total_steps * args.batch / 1000, "final_loss": final_loss, "seconds": time.time() - t0}
    return ema.eval(), summary


def teacher_metadata(hyper: dict, summary: dict[str, float], n_params: int) -> dict:
    """The file's metadata (each value is stored JSON-encoded; `format` is added by save_safetensors)."""
    return {
        "architecture": {"kind": "edm", "class_name": "EDMPrecond", "init_kwargs": INIT_KWARGS},
        "train_script": "examples/digits/train_teacher.py",
        "train_args": hyper,
        "kimg": summary["kimg"],
        "final_loss": summary["final_loss"],
        "loss_definition": "training loss (online weights, not the EMA), mean over the last 10 kimg of "
                           "edm_weight(sigma) * sum over 64 pixels of (D - x0)^2, ln sigma ~ N(-1.2, 1.2^2)",
        "data": "sklearn load_digits, simcli.data.digits split (seed 0, 1497 train / 300 held-out), x / 8 - 1",
        "torch_version": torch.__version__,
        "num_threads": NUM_THREADS,
        "num_params": n_params,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=ASSETS / "teacher.safetensors")
    parser.add_argument("--kimg", type=float, default=360.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--lr", type=float, default=6e-4)
    parser.add_argument("--warmup-kimg", type=float, default=0.0, help="linear lr warm-up length (0: none)")
    parser.add_argument("--ema-kimg", type=float, default=15.0, help="EMA half-life in kimg")
    parser.add_argument("--ema-rampup", type=float, default=0.05, help="half-life <= this x images seen (EDM)")
    args = parser.parse_args()
    ema, summary = train(args)
    n_params = sum(p.numel() for p in ema.parameters())
    hyper = {k: v for k, v in vars(args).items() if k != "out"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_safetensors(ema.state_dict(), args.out, "simcli-teacher/1", teacher_metadata(hyper, summary, n_params))
    print(f"params {n_params}  kimg {summary['kimg']:.1f}  final loss {summary['final_loss']:.4f}  "
          f"{summary['seconds']:.0f}s")
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes, sha256 {sha256(args.out)})")


if __name__ == "__main__":
    main()

"""Write the shipped FID reference statistics of the digits: simcli/assets/digits/stats-{train,test}.npz.

    python examples/digits/make_reference_stats.py

Features of the real digits (uint8, as EDM writes images) from the shipped digits classifier, through the same
code `simcli eval --backend digits` uses, so `--ref digits-train` and `--ref digits-test` match it exactly.
Rerun it whenever the classifier is retrained.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from simcli.data.digits import load_digits_split
from simcli.eval.features import get_extractor
from simcli.eval.stats import FeatureStats, compute_features

ASSETS = Path(__file__).resolve().parents[2] / "simcli" / "assets" / "digits"


def real_uint8(images) -> torch.Tensor:
    """float [N, 1, 8, 8] in [-1, 1] -> uint8 [N, 3, 8, 8] as every backend receives images."""
    x = (torch.from_numpy(images) * 127.5 + 128).clip(0, 255).to(torch.uint8)
    return x.expand(-1, 3, -1, -1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=ASSETS)
    args = parser.parse_args()
    extractor = get_extractor("digits")
    train, test = load_digits_split()
    for name, part in (("train", train), ("test", test)):
        feats, _ = compute_features([real_uint8(part.images)], extractor)
        stats = FeatureStats.from_features(
            feats, extractor=extractor.name, weights_sha256=extractor.weights_sha256,
            source=f"scikit-learn digits, simcli.data.digits {name} split ({len(part.images)} images)",
        )
        path = stats.save_npz(args.out_dir / f"stats-{name}.npz")
        print(f"{path}: n={stats.n}, dim={stats.dim}")


if __name__ == "__main__":
    main()

"""Generator -> Inception features throughput (images/s) at several batch sizes.

The generator is the full CIFAR-10 DDPM++ (random weights) sampled in one step; features come from
torch-fidelity's inception-v3-compat, with real weights when --feature-weights is given, else random weights
with BatchNorm statistics calibrated on noise (speed does not depend on the values; raw random weights would
produce denormals and run slower). Writes benchmarks/results/eval_throughput.{json,md}.

    python benchmarks/eval_throughput.py --batch 16 64 256 --images 256 [--device cuda]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from unittest import mock

import torch

from simcli.eval.features import get_extractor
from simcli.nets.registry import build_edm_network
from simcli.sampling.heun import one_step_generate
from simcli.sampling.images import to_uint8

CIFAR10 = {
    "model_type": "SongUNet", "embedding_type": "positional", "encoder_type": "standard", "decoder_type": "standard",
    "channel_mult_noise": 1, "resample_filter": [1, 1], "model_channels": 128, "channel_mult": [2, 2, 2],
    "augment_dim": 9, "dropout": 0.13, "use_fp16": False, "img_resolution": 32, "img_channels": 3, "label_dim": 0,
}


def random_inception_weights(path: Path) -> Path:
    """inception-v3-compat with random weights and BatchNorm statistics calibrated on random images."""
    from torch_fidelity import feature_extractor_inceptionv3 as fe

    torch.manual_seed(0)
    with mock.patch.object(fe.FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd, strict=True: None), \
            mock.patch.object(fe, "load_state_dict_from_url", lambda *a, **k: {}):
        net = fe.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None
            m.reset_running_stats()
    net.train()
    with torch.no_grad():
        net(torch.randint(0, 256, (16, 3, 64, 64), dtype=torch.uint8))
    torch.save(net.state_dict(), path)
    return path


def measure(generator, extractor, batch: int, images: int, device: torch.device) -> dict:
    seen, t_gen, t_feat = 0, 0.0, 0.0
    gen = torch.Generator(device=device).manual_seed(0)
    while seen < images:
        t0 = time.perf_counter()
        z = torch.randn((batch, 3, 32, 32), generator=gen, device=device)
        x = torch.from_numpy(to_uint8(one_step_generate(generator, z, sigma_init=2.5))).permute(0, 3, 1, 2)
        t1 = time.perf_counter()
        extractor.features(x.to(device))
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t_gen, t_feat, seen = t_gen + t1 - t0, t_feat + time.perf_counter() - t1, seen + batch
    return {"batch": batch, "images": seen, "generator_images_per_s": seen / t_gen,
            "features_images_per_s": seen / t_feat, "end_to_end_images_per_s": seen / (t_gen + t_feat)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[16, 64, 256])
    parser.add_argument("--images", type=int, default=256, help="images per batch size (rounded up to batches)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--feature-weights", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "eval_throughput")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        weights = args.feature_weights or random_inception_weights(Path(tmp) / "random-inception.pth")
        extractor = get_extractor("torch-fidelity", feature_weights=weights, device=device)
        generator = build_edm_network("EDMPrecond", CIFAR10).to(device).eval().requires_grad_(False)
        measure(generator, extractor, args.batch[0], args.batch[0], device)  # warm-up
        rows = [measure(generator, extractor, b, max(args.images, b), device) for b in args.batch]
    meta = {"device": str(device), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "weights": "given" if args.feature_weights else "random, BatchNorm-calibrated"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    lines = [f"# Generator -> Inception features ({meta['device']}, torch {meta['torch']}, {meta['threads']} threads)", "",
             "| batch | images | generator img/s | features img/s | end to end img/s |", "|---|---|---|---|---|"]
    lines += [f"| {r['batch']} | {r['images']} | {r['generator_images_per_s']:.1f} | {r['features_images_per_s']:.1f} | "
              f"{r['end_to_end_images_per_s']:.1f} |" for r in rows]
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

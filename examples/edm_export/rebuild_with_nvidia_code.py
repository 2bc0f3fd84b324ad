"""Rebuild a `simcli export --format safetensors` file with NVIDIA's own EDM or EDM2 code, and generate images with it.

    python rebuild_with_nvidia_code.py EXPORT.safetensors --nvidia-repo ~/src/edm --out images/ --n 16 --seed 0

--nvidia-repo is a checkout of NVlabs/edm (EDMPrecond, VPPrecond, VEPrecond, iDDPMPrecond in training/networks.py) or
NVlabs/edm2 (Precond in training/networks_edm2.py); the file's metadata `nvidia_code` says which. Nothing of NVIDIA's
is copied here and simcli is not imported: the script reads the file's metadata, builds the recorded class with the
recorded init_kwargs, loads the weights with load_state_dict(strict=True) and generates

    G(z) = D(sigma_init z; sigma_init)                  (one-step; a few-step generator then renoises and denoises
                                                          at each further level of `generator_sigmas`)

Seed i draws its latent, then its class (conditional networks), then the noise between steps from its own
torch.Generator(seed i), as NVIDIA's generate.py and `simcli sample` do, so the images equal `simcli sample`'s for the
same seeds. An EDM2 latent network's outputs are decoded with the VAE its record names (diffusers' AutoencoderKL,
`architecture.latents.vae`, or --vae DIR): raw = (x - bias) / scale per channel, then the decoder, as EDM2's
StabilityVAEEncoder.decode does. Pixels are written as {seed:06d}.png.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file


def read_export(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """(state_dict, metadata with every value but `format` decoded from JSON)."""
    with safe_open(str(path), framework="pt") as f:
        raw = f.metadata() or {}
    if raw.get("format") != "simcli-generator-export/1":
        raise SystemExit(f"{path} is not a simcli export (format {raw.get('format')!r})")
    meta = {k: json.loads(v) for k, v in raw.items() if k != "format"}
    return load_file(str(path)), meta


def nvidia_class(repo: Path, meta: dict) -> type:
    """The class the file was exported for, imported from NVIDIA's checkout (e.g. training.networks.EDMPrecond)."""
    code_file, class_name = meta["nvidia_code"].split(" ")
    sys.path.insert(0, str(repo))  # NVIDIA's modules import dnnlib and torch_utils from the checkout's root
    module = importlib.import_module(code_file.removesuffix(".py").replace("/", "."))
    return getattr(module, class_name)


def rebuild(cls: type, state_dict: dict[str, torch.Tensor], meta: dict) -> torch.nn.Module:
    """cls(**init_kwargs) with the file's weights, strictly (every name and shape must match), in eval mode."""
    net = cls(**meta["architecture"]["init_kwargs"])
    net.load_state_dict(state_dict, strict=True)
    return net.eval().requires_grad_(False)


def generate(net: torch.nn.Module, meta: dict, seeds: list[int], class_label: int | None = None,
             device: str = "cpu") -> torch.Tensor:
    """The generator's outputs [N, C, H, W] (float32, on the CPU) for the seeds, all in one batch."""
    kwargs = meta["architecture"]["init_kwargs"]
    shape = (kwargs["img_channels"], kwargs["img_resolution"], kwargs["img_resolution"])
    label_dim = kwargs.get("label_dim", 0)
    rngs = [torch.Generator().manual_seed(seed % 2**32) for seed in seeds]
    z = torch.stack([torch.randn(shape, generator=g) for g in rngs]).to(device)
    labels = None
    if label_dim:
        classes = torch.stack([torch.randint(label_dim, (), generator=g) for g in rngs])  # drawn even with --class
        if class_label is not None:
            classes = torch.full_like(classes, class_label)
        labels = torch.nn.functional.one_hot(classes, label_dim).to(device=device, dtype=torch.float32)
    net = net.to(device)
    sigmas = meta["generator_sigmas"]
    with torch.no_grad():
        x = net(sigmas[0] * z, torch.full((len(seeds),), sigmas[0], device=device), labels)
        for sigma in sigmas[1:]:
            noise = torch.stack([torch.randn(shape, generator=g) for g in rngs]).to(device)
            x = net(x + sigma * noise, torch.full((len(seeds),), sigma, device=device), labels)
    return x.to("cpu", torch.float32)


def to_images(x: torch.Tensor, meta: dict, vae: str | None = None) -> torch.Tensor:
    """uint8 images [N, H, W, C]: pixels as generate.py converts them; EDM2 latents through their VAE first."""
    latents = meta["architecture"].get("latents")
    if latents is None:
        return (x * 127.5 + 128).clip(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
    from diffusers import AutoencoderKL

    decoder = AutoencoderKL.from_pretrained(vae or latents["vae"], torch_dtype=torch.float32).eval()
    scale = torch.tensor(latents["scale"], dtype=torch.float32).reshape(1, -1, 1, 1)
    bias = torch.tensor(latents["bias"], dtype=torch.float32).reshape(1, -1, 1, 1)
    with torch.no_grad():
        y = torch.cat([decoder.decode(chunk).sample for chunk in ((x - bias) / scale).split(latents["batch_size"])])
    return y.clamp(0, 1).mul(255).to(torch.uint8).permute(0, 2, 3, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("export", type=Path, help="the exported .safetensors file")
    parser.add_argument("--nvidia-repo", type=Path, required=True, help="a checkout of NVlabs/edm or NVlabs/edm2")
    parser.add_argument("--out", type=Path, required=True, help="folder for the {seed:06d}.png images")
    parser.add_argument("--n", type=int, default=16, help="number of images")
    parser.add_argument("--seed", type=int, default=0, help="first seed; image i uses seed + i")
    parser.add_argument("--class", dest="class_label", type=int, default=None, help="class of a conditional network")
    parser.add_argument("--vae", default=None, help="EDM2 latents: a VAE folder or Hub name, not the recorded one")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    from PIL import Image

    state_dict, meta = read_export(args.export)
    net = rebuild(nvidia_class(args.nvidia_repo, meta), state_dict, meta)
    seeds = list(range(args.seed, args.seed + args.n))
    images = to_images(generate(net, meta, seeds, args.class_label, args.device), meta, args.vae).numpy()
    args.out.mkdir(parents=True, exist_ok=True)
    for seed, image in zip(seeds, images, strict=True):
        Image.fromarray(image.squeeze(-1) if image.shape[-1] == 1 else image).save(args.out / f"{seed:06d}.png")
    print(f"wrote {len(seeds)} images to {args.out}")


if __name__ == "__main__":
    main()

"""TEST-ONLY: tiny EDM2 networks and their snapshot pickles in NVlabs/edm2's format, and a tiny VAE folder.

An EDM2 post-hoc snapshot (reconstruct_phema.py) pickles a dnnlib EasyDict of `ema` (training.networks_edm2.Precond
in float16, eval mode), `encoder` (training.encoders.StabilityVAEEncoder without its VAE: vae_name, numpy float32
scale and bias, batch_size), `loss_fn` (EDM2Loss) and `dataset_kwargs`. The bytes use the upstream global names
(written by tests.helpers.edm_pickle_writer's node pickler, so neither dnnlib nor torch_utils need exist here).

Never import this from simcli.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from simcli.nets.edm2_precond import UPSTREAM_CLASS_NAMES, EDM2Precond
from tests.helpers.edm_pickle_writer import EdmWriter, Global, NewDict, Reduce, dumps, persistent_obj

NUMPY = "numpy.core.multiarray"
RAW_MEAN = (5.81, 3.25, 0.12, -2.15)  # edm2/training/encoders.py StabilityVAEEncoder defaults
RAW_STD = (4.17, 4.62, 3.71, 3.28)
SRC = "# stand-in for training/networks_edm2.py; never executed\nclass Precond: pass\n"


def tiny_edm2_kwargs(label_dim: int = 10, img_channels: int = 4, resolution: int = 8, **extra: Any) -> dict:
    """`_init_kwargs` of a tiny EDM2 Precond (the official keys: model_channels, channel_mult, ...)."""
    kwargs = {"img_resolution": resolution, "img_channels": img_channels, "label_dim": label_dim, "use_fp16": True,
              "model_channels": 16, "channel_mult": [1, 2], "num_blocks": 1, "attn_resolutions": [4],
              "channels_per_head": 8, "logvar_channels": 8, "dropout": 0.0}
    return {**kwargs, **extra}


def tiny_edm2(seed: int = 0, **kwargs: Any) -> tuple[EDM2Precond, dict]:
    """(network with random weights, its init kwargs): the zero-initialised gains made non-zero so outputs vary."""
    init_kwargs = tiny_edm2_kwargs(**kwargs)
    torch.manual_seed(seed)
    net = EDM2Precond(**init_kwargs).eval()
    with torch.no_grad():
        for p in net.parameters():
            if p.ndim == 0 or p.numel() == 1:  # out_gain, emb_gain and the like start at 0 upstream
                p.copy_(torch.rand(()) * 0.5 + 0.25)
    return net, init_kwargs


def _dtype(spec: str) -> Reduce:
    return Reduce(Global("numpy", "dtype"), (spec, False, True), state=(3, "<", None, None, None, -1, -1, 0))


def ndarray_node(values: np.ndarray, spelling: str = NUMPY) -> Reduce:
    """numpy's pickle of an array: _reconstruct(ndarray, (0,), b'b') then BUILD (1, shape, dtype, False, bytes)."""
    values = np.ascontiguousarray(values)
    spec = {np.float32: "f4", np.float64: "f8"}[values.dtype.type]
    return Reduce(Global(spelling, "_reconstruct"), (Global("numpy", "ndarray"), (0,), b"b"),
                  state=(1, values.shape, _dtype(spec), False, values.astype("<" + spec).tobytes()))


def encoder_node(vae_name: str, batch_size: int = 8, class_name: str = "StabilityVAEEncoder",
                 scale: np.ndarray | None = None, bias: np.ndarray | None = None) -> Reduce:
    """A pickled StabilityVAEEncoder (scale and bias computed as upstream, in float32) or StandardRGBEncoder."""
    scale = np.float32(0.5) / np.float32(RAW_STD) if scale is None else scale
    bias = np.float32(0) - np.float32(RAW_MEAN) * scale if bias is None else bias
    state: dict[str, Any] = {"_init_args": (), "_init_kwargs": {}}
    if class_name == "StabilityVAEEncoder":
        state.update(vae_name=vae_name, scale=ndarray_node(scale), bias=ndarray_node(bias), batch_size=batch_size,
                     _vae=None)
    return persistent_obj(class_name, state, "# stand-in for training/encoders.py\n")


def edm2_snapshot_bytes(net: EDM2Precond, init_kwargs: dict, *, vae_name: str | None = "stabilityai/sd-vae-ft-mse",
                        dtype: torch.dtype = torch.float16, encoder: Any = None, extra: dict | None = None) -> bytes:
    """The post-hoc snapshot pickle (protocol 4): `ema` in `dtype`, the encoder (StandardRGBEncoder when vae_name is
    None), EDM2Loss and dataset_kwargs, under a dnnlib EasyDict."""
    writer = EdmWriter(module_src=SRC, class_names=UPSTREAM_CLASS_NAMES, dtype=dtype)
    if encoder is None:
        encoder = encoder_node(vae_name) if vae_name is not None else encoder_node("", class_name="StandardRGBEncoder")
    loss = persistent_obj("EDM2Loss", {"P_mean": -0.4, "P_std": 1.0, "sigma_data": 0.5, "_init_args": (),
                                       "_init_kwargs": {"P_mean": -0.4, "P_std": 1.0}}, "# training_loop.py\n")
    items = {"dataset_kwargs": {"class_name": "training.dataset.ImageFolderDataset", "path": "img512-sd.zip",
                                "use_labels": True}, "encoder": encoder, "loss_fn": loss,
             "ema": writer.node(net, init_kwargs), **(extra or {})}
    return dumps(NewDict(Global("dnnlib.util", "EasyDict"), items), protocol=4)


def write_edm2_snapshot(path: str | Path, net: EDM2Precond, init_kwargs: dict, **options: Any) -> Path:
    path = Path(path)
    path.write_bytes(edm2_snapshot_bytes(net, init_kwargs, **options))
    return path


def write_tiny_vae(folder: str | Path, seed: int = 0) -> Path:
    """A tiny diffusers AutoencoderKL (4 latent channels, 8x downsampling would be SD's; here 2x: 8x8 latents <->
    16x16 images) saved as a folder, standing in for stabilityai/sd-vae-ft-mse."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), layers_per_block=1,
                        latent_channels=4, norm_num_groups=4, sample_size=16)
    vae.save_pretrained(str(folder))
    return Path(folder)

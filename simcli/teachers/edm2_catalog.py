"""Catalog of NVIDIA's EDM2 networks (NVlabs/edm2, Karras et al. 2024): names, files, sizes. Pure data.

Every official EDM2 network is a post-hoc EMA reconstruction `edm2-img{512|64}-{size}[-uncond]-{kimg}-{ema_std}.pkl`
under https://nvlabs-fi-cdn.nvidia.com/edm2/posthoc-reconstructions/. simcli accepts any such file stem as a teacher
or guide name (`edm2-img512-xs-uncond-2147483-0.045`), and short names for the ones EDM2's generate_images.py
presets use as main networks (edm2/generate_images.py:30-45), with the metric their EMA length was chosen for:

    edm2-img512-{xs,s,m,l,xl,xxl}        = -fid: the EMA length that minimises FID (paper Table 5 / 2)
    edm2-img512-{size}-dino              the EMA length that minimises FD-DINOv2
    edm2-img64-{s,m,l,xl}                = -fid (ImageNet-64 in pixels, paper Table 3)

ImageNet-512 networks run on SD VAE latents (4 x 64 x 64; simcli.teachers.edm2_latents); ImageNet-64 ones on pixels.
Guidance networks of the presets (EDM2's autoguidance and CFG: generate_images.py:46-63) are named by their stems.

`approx_size_bytes` are the sizes of pickles emulated from the official code (float16 network, encoder, loss and
dataset records as reconstruct_phema.py writes them), not of the CDN files, which could not be fetched: treat them as
+-`SIZE_TOLERANCE`. Architectures without an emulated size (none of EDM2's published files) are not size-checked. The reference statistics of each dataset (`img512`, `img64`) are simcli.eval's.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from typing import Any

from simcli.errors import UsageError

EDM2_ROOT_URL = "https://nvlabs-fi-cdn.nvidia.com/edm2/"
POSTHOC_URL = EDM2_ROOT_URL + "posthoc-reconstructions/"
SIZE_TOLERANCE = 500_000
EDM2_SAMPLER_STEPS = 32  # EDM2's sampler: 2nd-order Heun, 32 steps, sigma 0.002..80, rho 7 (generate_images.py:77)
STEM = re.compile(r"^edm2-(img512|img64)-(xs|s|m|l|xl|xxl)(-uncond)?-(\d{7})-(\d\.\d{3})$")

# Per architecture (dataset, size, conditional): model_channels, dropout (edm2/train_edm2.py:27-37) and the emulated
# pickle size in bytes.
CHANNELS = {"xs": 128, "s": 192, "m": 256, "l": 320, "xl": 384, "xxl": 448}
DROPOUT = {"xs": 0.0, "s": 0.0, "m": 0.1, "l": 0.1, "xl": 0.1, "xxl": 0.1}
# Emulated with the official code (training_loop.py's snapshot, reconstruct_phema.py's float16 copy, pickled through
# torch_utils.persistence with the release's module sources, torch 2.3, protocol 4): 2 bytes per element (parameters
# and buffers) plus about 140 KB of records and module sources. Element counts are exact; the sizes could differ
# from the CDN's by the length of NVIDIA's internal sources and dataset paths (hence SIZE_TOLERANCE).
APPROX_SIZE_BYTES: dict[tuple[str, str, bool], int] = {
    ("img512", "xs", True): 249_567_122,
    ("img512", "s", True): 560_566_556,
    ("img512", "m", True): 995_756_847,
    ("img512", "l", True): 1_555_137_711,
    ("img512", "xl", True): 2_238_709_295,
    ("img512", "xxl", True): 3_046_471_599,
    ("img512", "xs", False): 248_542_554,
    ("img512", "s", False): 559_029_988,
    ("img64", "xs", True): 249_562_142,
    ("img64", "s", True): 560_559_272,
    ("img64", "m", True): 995_747_259,
    ("img64", "l", True): 1_555_125_819,
    ("img64", "xl", True): 2_238_695_099,
}

# The latent space of the ImageNet-512 networks: StabilityVAEEncoder's defaults (edm2/training/encoders.py).
SD_VAE = "stabilityai/sd-vae-ft-mse"
RAW_MEAN = (5.81, 3.25, 0.12, -2.15)
RAW_STD = (4.17, 4.62, 3.71, 3.28)
FINAL_STD = 0.5
ENCODER_BATCH_SIZE = 8


@dataclass(frozen=True)
class Edm2Network:
    """One official EDM2 snapshot file, addressed by a simcli name (its stem, or a short name)."""

    name: str
    stem: str
    metric: str | None = None  # 'fid' or 'fd_dinov2': what its EMA length was chosen for (short names only)
    paper_value: float | None = None  # that metric, from generate_images.py's preset comments

    @property
    def _parts(self) -> tuple[str, ...]:
        found = STEM.match(self.stem)
        assert found is not None, self.stem
        return found.groups()

    @property
    def dataset(self) -> str:
        """'img512' (latents of the SD VAE) or 'img64' (pixels); also the name of its reference statistics."""
        return self._parts[0]

    @property
    def size(self) -> str:
        return self._parts[1]

    @property
    def conditional(self) -> bool:
        return self._parts[2] is None

    @property
    def file_name(self) -> str:
        return self.stem + ".pkl"

    @property
    def url(self) -> str:
        return POSTHOC_URL + self.file_name

    @property
    def approx_size_bytes(self) -> int | None:
        return APPROX_SIZE_BYTES.get((self.dataset, self.size, self.conditional))

    @property
    def size_tolerance(self) -> int:
        return SIZE_TOLERANCE

    @property
    def fid_reference(self) -> str:
        return self.dataset

    @property
    def preset(self) -> str:
        return f"edm2-{self.dataset}"

    @property
    def description(self) -> str:
        """One line, e.g. 'EDM2-XS ImageNet-512 (latents), 1000 classes, EMA 0.135, FID 3.53 (EDM2 paper)'."""
        data = "ImageNet-512 (latents)" if self.dataset == "img512" else "ImageNet-64"
        cond = "1000 classes" if self.conditional else "unconditional"
        score = f", {'FID' if self.metric == 'fid' else 'FD-DINOv2'} {self.paper_value:g} (EDM2 paper)" if self.metric else ""
        return f"EDM2-{self.size.upper()} {data}, {cond}, EMA {self._parts[4]}{score}"


def _f32(value: float) -> float:
    """value rounded to float32 (EDM2 computes its latent constants with np.float32)."""
    return struct.unpack("<f", struct.pack("<f", value))[0]


def sd_vae_latents() -> dict[str, Any]:
    """The latent-space record (simcli.teachers.edm2_latents) of the ImageNet-512 networks: scale = 0.5 / raw_std and
    bias = 0 - raw_mean * scale in float32, as StabilityVAEEncoder computes them."""
    scale = [_f32(_f32(FINAL_STD) / _f32(s)) for s in RAW_STD]
    bias = [-_f32(_f32(m) * k) for m, k in zip(RAW_MEAN, scale, strict=True)]
    return {"kind": "edm2-vae", "vae": SD_VAE, "scale": scale, "bias": bias, "batch_size": ENCODER_BATCH_SIZE}


def edm2_network_record(entry: Edm2Network) -> dict[str, Any]:
    """The architecture record simcli builds when the file is loaded (simcli.teachers.edm_pickle), from the catalog:
    the `_init_kwargs` EDM2's training records (train_edm2.py:75 network kwargs with the dataset's interface
    kwargs), and the latent space of the ImageNet-512 networks. Nothing is downloaded."""
    pixels = entry.dataset == "img64"
    kwargs = {"model_channels": CHANNELS[entry.size], "dropout": DROPOUT[entry.size], "img_resolution": 64,
              "img_channels": 3 if pixels else 4, "label_dim": 1000 if entry.conditional else 0}
    record: dict[str, Any] = {"kind": "edm", "class_name": "Precond", "init_kwargs": kwargs}
    if not pixels:
        record["latents"] = sd_vae_latents()
    return record


# (short name, stem, metric, value): edm2/generate_images.py:30-45 (values from its comments).
_PRESETS = (
    ("edm2-img512-xs-fid", "edm2-img512-xs-2147483-0.135", "fid", 3.53),
    ("edm2-img512-xs-dino", "edm2-img512-xs-2147483-0.200", "fd_dinov2", 103.39),
    ("edm2-img512-s-fid", "edm2-img512-s-2147483-0.130", "fid", 2.56),
    ("edm2-img512-s-dino", "edm2-img512-s-2147483-0.190", "fd_dinov2", 68.64),
    ("edm2-img512-m-fid", "edm2-img512-m-2147483-0.100", "fid", 2.25),
    ("edm2-img512-m-dino", "edm2-img512-m-2147483-0.155", "fd_dinov2", 58.44),
    ("edm2-img512-l-fid", "edm2-img512-l-1879048-0.085", "fid", 2.06),
    ("edm2-img512-l-dino", "edm2-img512-l-1879048-0.155", "fd_dinov2", 52.25),
    ("edm2-img512-xl-fid", "edm2-img512-xl-1342177-0.085", "fid", 1.96),
    ("edm2-img512-xl-dino", "edm2-img512-xl-1342177-0.155", "fd_dinov2", 45.96),
    ("edm2-img512-xxl-fid", "edm2-img512-xxl-0939524-0.070", "fid", 1.91),
    ("edm2-img512-xxl-dino", "edm2-img512-xxl-0939524-0.150", "fd_dinov2", 42.84),
    ("edm2-img64-s-fid", "edm2-img64-s-1073741-0.075", "fid", 1.58),
    ("edm2-img64-m-fid", "edm2-img64-m-2147483-0.060", "fid", 1.43),
    ("edm2-img64-l-fid", "edm2-img64-l-1073741-0.040", "fid", 1.33),
    ("edm2-img64-xl-fid", "edm2-img64-xl-0671088-0.040", "fid", 1.33),
)

EDM2_NETWORKS: dict[str, Edm2Network] = {}
for _name, _stem, _metric, _value in _PRESETS:
    EDM2_NETWORKS[_name] = Edm2Network(_name, _stem, _metric, _value)
    if _name.endswith("-fid"):  # the short name without a suffix is the FID one
        EDM2_NETWORKS[_name.removesuffix("-fid")] = Edm2Network(_name.removesuffix("-fid"), _stem, _metric, _value)

STEM_PATTERN = "edm2-img{512|64}-SIZE[-uncond]-KIMG-EMA"  # any official file stem (STEM)
NAME_PATTERNS = ("edm2-img512-{xs,s,m,l,xl,xxl}[-fid|-dino]", "edm2-img64-{s,m,l,xl}[-fid]", STEM_PATTERN)


def is_edm2_name(name: str) -> bool:
    """A short EDM2 name or an official post-hoc file stem."""
    return name in EDM2_NETWORKS or STEM.match(name) is not None


def get_edm2_network(name: str) -> Edm2Network:
    """The catalog entry of a short name or file stem; UsageError for anything else."""
    if name in EDM2_NETWORKS:
        return EDM2_NETWORKS[name]
    if STEM.match(name):
        return Edm2Network(name, name)
    raise UsageError(f"unknown EDM2 network {name!r}", hint=f"known: {', '.join(NAME_PATTERNS)}")

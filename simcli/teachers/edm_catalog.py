"""Catalog of the official EDM teachers (NVlabs/edm, Karras et al. 2022) and their FID reference statistics.

Pure data: no network, no torch. `simcli.teachers.edm_files` turns a teacher entry into a cached file,
`simcli.eval.references` an FID reference.

simcli teacher names (`--teacher`), one per official `edm-*.pkl` (edm-spec section 2):

    simcli name          upstream file                          arch     labels  paper FID  sampler
    edm-cifar10          edm-cifar10-32x32-uncond-vp.pkl        DDPM++   0       1.97       18 steps (NFE 35)
    edm-cifar10-cond     edm-cifar10-32x32-cond-vp.pkl          DDPM++   10      1.79       18 steps (NFE 35)
    edm-cifar10-ve       edm-cifar10-32x32-uncond-ve.pkl        NCSN++   0       1.98 [I]   18 steps (NFE 35)
    edm-cifar10-cond-ve  edm-cifar10-32x32-cond-ve.pkl          NCSN++   10      1.79 [I]   18 steps (NFE 35)
    edm-ffhq64           edm-ffhq-64x64-uncond-vp.pkl           DDPM++   0       2.39       40 steps (NFE 79)
    edm-ffhq64-ve        edm-ffhq-64x64-uncond-ve.pkl           NCSN++   0       2.53 [I]   40 steps (NFE 79)
    edm-afhqv2-64        edm-afhqv2-64x64-uncond-vp.pkl         DDPM++   0       1.96       40 steps (NFE 79)
    edm-afhqv2-64-ve     edm-afhqv2-64x64-uncond-ve.pkl         NCSN++   0       2.16 [I]   40 steps (NFE 79)
    edm-imagenet64       edm-imagenet-64x64-cond-adm.pkl        ADM      1000    1.36       256 steps, stochastic (NFE 511)

Naming rule: `edm-<dataset><resolution>`, with `-cond` for class-conditional models and `-ve` for the NCSN++
architecture; the DDPM++ ("vp") models carry no suffix because they are the ones the papers distil.
`afhqv2-64` keeps a dash so the dataset version does not run into the resolution. ImageNet has only the
conditional ADM model, so its name carries neither suffix.

Every file holds an `EDMPrecond` (sigma_data=0.5); the upstream "-vp", "-ve" and "-adm" suffixes name the
architecture, not the preconditioner (edm-spec section 0). `approx_size_bytes` are the byte sizes of pickles
emulated from the upstream source, not of the CDN files, which could not be fetched: treat them as
+-`size_tolerance` (0.5 MB). Values marked [I] in the spec are flagged by `fid_verified=False`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from simcli.errors import UsageError

EDM_ROOT_URL = "https://nvlabs-fi-cdn.nvidia.com/edm/"
EDM_BASE_URL = EDM_ROOT_URL + "pretrained/"
FID_REFS_BASE_URL = EDM_ROOT_URL + "fid-refs/"

# edm-spec section 2: emulated sizes are within a few KB of the real files; +-0.5 MB is plausible.
DEFAULT_SIZE_TOLERANCE = 500_000

Arch = Literal["ddpmpp", "ncsnpp", "adm"]


@dataclass(frozen=True)
class SamplerPreset:
    """The paper's EDM sampler settings (generate.py `edm_sampler`, Heun 2nd order, rho=7)."""

    steps: int
    nfe: int
    s_churn: float = 0.0
    s_min: float = 0.0
    s_max: float = float("inf")
    s_noise: float = 1.0

    @property
    def deterministic(self) -> bool:
        return self.s_churn == 0.0


@dataclass(frozen=True)
class EdmTeacher:
    """One official EDM checkpoint, addressed by its simcli name."""

    name: str
    file_name: str
    dataset: str
    resolution: int
    label_dim: int
    arch: Arch
    channel_mult: tuple[int, ...]
    augment_dim: int
    dropout: float
    use_fp16: bool
    num_params: int
    approx_size_bytes: int
    paper_fid: float
    fid_verified: bool  # False: recalled from the paper's Table 2, not re-checked (edm-spec [I])
    sampler: SamplerPreset
    fid_reference: str  # key into FID_REFERENCES
    size_tolerance: int = DEFAULT_SIZE_TOLERANCE
    img_channels: int = 3

    @property
    def url(self) -> str:
        return EDM_BASE_URL + self.file_name

    @property
    def conditional(self) -> bool:
        return self.label_dim > 0

    @property
    def model_type(self) -> str:
        """Upstream inner network class: SongUNet (DDPM++/NCSN++) or DhariwalUNet (ADM)."""
        return "DhariwalUNet" if self.arch == "adm" else "SongUNet"

    @property
    def architecture(self) -> str:
        """One-line summary, e.g. 'EDMPrecond + SongUNet DDPM++, 55.7M params, 32x32, unconditional'."""
        kind = {"ddpmpp": "DDPM++", "ncsnpp": "NCSN++", "adm": "ADM"}[self.arch]
        cond = f"{self.label_dim} classes" if self.conditional else "unconditional"
        fp16 = ", fp16 trunk" if self.use_fp16 else ""
        return (
            f"EDMPrecond + {self.model_type} {kind}, {self.num_params / 1e6:.1f}M params, "
            f"{self.resolution}x{self.resolution}, {cond}{fp16}"
        )


@dataclass(frozen=True)
class FidReference:
    """Inception statistics (`mu` [2048], `sigma` [2048x2048], float64 npz) of a data set, from the EDM CDN."""

    name: str
    file_name: str
    dataset: str
    resolution: int
    description: str
    # np.savez(mu, sigma) of that shape is 33,571,316 bytes here; inferred, not checked against the CDN.
    approx_size_bytes: int = 33_571_316
    size_tolerance: int = DEFAULT_SIZE_TOLERANCE

    @property
    def url(self) -> str:
        return FID_REFS_BASE_URL + self.file_name


_FAST = SamplerPreset(steps=18, nfe=35)
_64PX = SamplerPreset(steps=40, nfe=79)
_IMAGENET = SamplerPreset(steps=256, nfe=511, s_churn=40.0, s_min=0.05, s_max=50.0, s_noise=1.003)
_SONG_32 = dict(resolution=32, channel_mult=(2, 2, 2), augment_dim=9, dropout=0.13, use_fp16=False, sampler=_FAST)
_SONG_64 = dict(resolution=64, channel_mult=(1, 2, 2, 2), augment_dim=9, use_fp16=False, sampler=_64PX)

EDM_TEACHERS: dict[str, EdmTeacher] = {
    t.name: t
    for t in (
        EdmTeacher("edm-cifar10", "edm-cifar10-32x32-uncond-vp.pkl", "cifar10", label_dim=0, arch="ddpmpp",
                   num_params=55_733_891, approx_size_bytes=223_185_564, paper_fid=1.97, fid_verified=True,
                   fid_reference="cifar10-train", **_SONG_32),
        EdmTeacher("edm-cifar10-cond", "edm-cifar10-32x32-cond-vp.pkl", "cifar10", label_dim=10, arch="ddpmpp",
                   num_params=55_735_299, approx_size_bytes=223_192_262, paper_fid=1.79, fid_verified=True,
                   fid_reference="cifar10-train", **_SONG_32),
        EdmTeacher("edm-cifar10-ve", "edm-cifar10-32x32-uncond-ve.pkl", "cifar10", label_dim=0, arch="ncsnpp",
                   num_params=56_397_827, approx_size_bytes=225_845_614, paper_fid=1.98, fid_verified=False,
                   fid_reference="cifar10-train", **_SONG_32),
        EdmTeacher("edm-cifar10-cond-ve", "edm-cifar10-32x32-cond-ve.pkl", "cifar10", label_dim=10, arch="ncsnpp",
                   num_params=56_400_643, approx_size_bytes=225_857_652, paper_fid=1.79, fid_verified=False,
                   fid_reference="cifar10-train", **_SONG_32),
        EdmTeacher("edm-ffhq64", "edm-ffhq-64x64-uncond-vp.pkl", "ffhq", label_dim=0, arch="ddpmpp", dropout=0.05,
                   num_params=61_805_571, approx_size_bytes=247_528_740, paper_fid=2.39, fid_verified=True,
                   fid_reference="ffhq64", **_SONG_64),
        EdmTeacher("edm-ffhq64-ve", "edm-ffhq-64x64-uncond-ve.pkl", "ffhq", label_dim=0, arch="ncsnpp", dropout=0.05,
                   num_params=62_761_091, approx_size_bytes=251_356_770, paper_fid=2.53, fid_verified=False,
                   fid_reference="ffhq64", **_SONG_64),
        EdmTeacher("edm-afhqv2-64", "edm-afhqv2-64x64-uncond-vp.pkl", "afhqv2", label_dim=0, arch="ddpmpp",
                   dropout=0.25, num_params=61_805_571, approx_size_bytes=247_528_742, paper_fid=1.96,
                   fid_verified=True, fid_reference="afhqv2-64", **_SONG_64),
        EdmTeacher("edm-afhqv2-64-ve", "edm-afhqv2-64x64-uncond-ve.pkl", "afhqv2", label_dim=0, arch="ncsnpp",
                   dropout=0.25, num_params=62_761_091, approx_size_bytes=251_356_772, paper_fid=2.16,
                   fid_verified=False, fid_reference="afhqv2-64", **_SONG_64),
        EdmTeacher("edm-imagenet64", "edm-imagenet-64x64-cond-adm.pkl", "imagenet", resolution=64, label_dim=1000,
                   arch="adm", channel_mult=(1, 2, 3, 4), augment_dim=0, dropout=0.10, use_fp16=True,
                   num_params=295_899_267, approx_size_bytes=1_183_880_348, paper_fid=1.36, fid_verified=True,
                   sampler=_IMAGENET, fid_reference="imagenet64"),
    )
}

# edm-spec 2.1: the `_init_kwargs` train.py records for each architecture (the interface kwargs come per entry).
_ARCH_KWARGS: dict[str, dict[str, object]] = {
    "ddpmpp": {"model_type": "SongUNet", "embedding_type": "positional", "encoder_type": "standard",
               "decoder_type": "standard", "channel_mult_noise": 1, "resample_filter": [1, 1], "model_channels": 128},
    "ncsnpp": {"model_type": "SongUNet", "embedding_type": "fourier", "encoder_type": "residual",
               "decoder_type": "standard", "channel_mult_noise": 2, "resample_filter": [1, 3, 3, 1],
               "model_channels": 128},
    "adm": {"model_type": "DhariwalUNet", "model_channels": 192},
}


def edm_network_record(entry: EdmTeacher) -> dict[str, object]:
    """The architecture record simcli builds for an official checkpoint once loaded (simcli.teachers.edm_pickle:
    kind 'edm', the `ema` object's class and `_init_kwargs`), from the catalog alone: every edm-*.pkl holds an
    EDMPrecond (edm-spec 0), whose kwargs train.py writes in this order (edm-spec 2.1; augment_dim only when
    augmentation was on, as it was for every SongUNet model)."""
    kwargs: dict[str, object] = {**_ARCH_KWARGS[entry.arch], "channel_mult": list(entry.channel_mult)}
    if entry.augment_dim:
        kwargs["augment_dim"] = entry.augment_dim
    kwargs.update(dropout=entry.dropout, use_fp16=entry.use_fp16, img_resolution=entry.resolution,
                  img_channels=entry.img_channels, label_dim=entry.label_dim)
    return {"kind": "edm", "class_name": "EDMPrecond", "init_kwargs": kwargs}


# edm-spec section 2.4. "imagenet64-baseline" belongs to baseline/baseline-imagenet-64x64-cond-adm.pkl only.
FID_REFERENCES: dict[str, FidReference] = {
    r.name: r
    for r in (
        FidReference("cifar10-train", "cifar10-32x32.npz", "cifar10", 32, "CIFAR-10 training set, 50k images"),
        FidReference("ffhq64", "ffhq-64x64.npz", "ffhq", 64, "FFHQ 64x64, 70k images"),
        FidReference("afhqv2-64", "afhqv2-64x64.npz", "afhqv2", 64, "AFHQv2 64x64, 15.8k images"),
        FidReference("imagenet64", "imagenet-64x64.npz", "imagenet", 64, "ImageNet 64x64 train, for the EDM model"),
        FidReference("imagenet64-baseline", "imagenet-64x64-baseline.npz", "imagenet", 64,
                     "ImageNet 64x64, for the baseline ADM model only"),
    )
}


def get_edm_teacher(name: str) -> EdmTeacher:
    """Look a teacher up by simcli name, upstream file name or file stem; unknown names are a UsageError."""
    if name in EDM_TEACHERS:
        return EDM_TEACHERS[name]
    for entry in EDM_TEACHERS.values():
        if name in (entry.file_name, entry.file_name.removesuffix(".pkl")):
            return entry
    raise UsageError(f"unknown EDM teacher '{name}'", hint=f"known EDM teachers: {', '.join(EDM_TEACHERS)}")


def get_fid_reference(name: str) -> FidReference:
    """Look FID reference statistics up by catalog name or npz file name; unknown names are a UsageError."""
    if name in FID_REFERENCES:
        return FID_REFERENCES[name]
    for ref in FID_REFERENCES.values():
        if name == ref.file_name:
            return ref
    raise UsageError(f"unknown FID reference '{name}'", hint=f"known references: {', '.join(FID_REFERENCES)}")

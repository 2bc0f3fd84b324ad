"""EDM's augmentation pipeline, in the configuration EDM, SiD and Diff-Instruct train CIFAR-10 with.

Karras et al. 2022 (EDM, Appendix F.2; NVlabs/edm `training/augment.py`, class AugmentPipe, built on the
StyleGAN2-ADA pipeline of Karras et al. 2020) as `train.py --augment P` configures it: x-flip (multiplier
1e8), y-flip, isotropic scaling, fractional rotation, anisotropic scaling and fractional translation (each
multiplier 1), and nothing else. Re-implemented from that description; the facts kept from upstream are the
transform order, the parameter distributions, the 9-column label layout, the order of the random draws and
the resampling scheme (reflect padding, 2x upsampling with the symlet-6 low-pass filter, bilinear sampling,
filtered 2x downsampling).

**Probability multipliers.** Each transform is applied to a sample with probability min(1, multiplier * p),
its parameters drawn independently per sample. The x-flip multiplier 1e8 makes that probability 1 for any
p > 0, and the flip itself is a fair coin, so a sample is mirrored with probability 1/2 whatever p is; every
other transform (multiplier 1) is applied with probability p, the y-flip then flipping with probability 1/2.

**Labels.** The transform parameters, 9 floats per sample, zero when a transform was not applied:
[xflip, yflip, scale, cos(rot) - 1, sin(rot), aniso cos(phi), aniso sin(phi), tx, ty] (`LABEL_NAMES`);
scale and aniso are log2 scale factors in units of their standard deviations, tx and ty the translation in
units of translate_frac_std times the image size. The networks of EDM's CIFAR-10, FFHQ and AFHQ teachers have
augment_dim = 9 for exactly these labels.

Every random number comes from the torch.Generator passed in (on the images' device), so a run reseeded
from (seed, step) repeats its augmentations exactly. Differences from upstream: p = 0 returns the images
unchanged without drawing (upstream still resamples, which is the identity up to rounding), and a disabled
transform keeps its label columns (zeros) where upstream drops them; with the CIFAR-10 configuration both
give the same 9 columns.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from simcli.nets.denoiser import Denoiser

AUGMENT_DIM = 9
LABEL_NAMES = ("xflip", "yflip", "scale", "rotate_cos", "rotate_sin", "aniso_cos", "aniso_sin", "translate_x", "translate_y")

# Low-pass decomposition filter of the symlet wavelet with 6 vanishing moments (Daubechies 1992, as tabulated by
# PyWavelets 'sym6' and used by EDM/StyleGAN2-ADA for the 2x up- and downsampling around the geometric transform).
SYM6 = (
    0.015404109327027373, 0.0034907120842174702, -0.11799011114819057, -0.048311742585633,
    0.4910559419267466, 0.787641141030194, 0.3379294217276218, -0.07263752278646252,
    -0.021060292512300564, 0.04472490177066578, 0.0017677118642428036, -0.007800708325034148,
)


@dataclass(frozen=True)
class AugmentParams:
    """The per-sample parameters of one call ([N] each, translate [N, 2]); zero means not applied."""

    xflip: torch.Tensor
    """1 where the sample is mirrored left-right."""
    yflip: torch.Tensor
    """1 where the sample is mirrored top-bottom."""
    scale: torch.Tensor
    """Isotropic scaling by 2^(scale * scale_std) (the image grows for positive values)."""
    rotate: torch.Tensor
    """Rotation angle in radians."""
    aniso: torch.Tensor
    """Anisotropic scaling by 2^(aniso * aniso_std) along the axis at angle aniso_angle, 2^-(...) across it."""
    aniso_angle: torch.Tensor
    """Angle (radians) of the anisotropic scaling's axis."""
    translate: torch.Tensor
    """Translation (x right, y down) in units of translate_frac_std times the image width and height."""

    def labels(self) -> torch.Tensor:
        """The augment labels [N, 9] in the order of LABEL_NAMES (float32)."""
        columns = [
            self.xflip, self.yflip, self.scale, self.rotate.cos() - 1, self.rotate.sin(),
            self.aniso * self.aniso_angle.cos(), self.aniso * self.aniso_angle.sin(), self.translate[:, 0], self.translate[:, 1],
        ]
        return torch.stack([c.to(torch.float32) for c in columns], dim=1)


def _matrices(n: int, device: torch.device, a, b, c, d, e, f) -> torch.Tensor:
    """[n, 3, 3] affine matrices [[a, b, c], [d, e, f], [0, 0, 1]] from [n] tensors or numbers."""
    def col(v):
        return torch.as_tensor(v, dtype=torch.float32, device=device).expand(n)

    zero, one = col(0.0), col(1.0)
    return torch.stack([col(a), col(b), col(c), col(d), col(e), col(f), zero, zero, one], dim=1).reshape(n, 3, 3)


def _translation(n, device, tx, ty) -> torch.Tensor:
    return _matrices(n, device, 1.0, 0.0, tx, 0.0, 1.0, ty)


def _scaling(n, device, sx, sy) -> torch.Tensor:
    return _matrices(n, device, sx, 0.0, 0.0, 0.0, sy, 0.0)


def _rotation(n, device, angle: torch.Tensor) -> torch.Tensor:
    """Rotation by angle (radians) in (x right, y down) pixel coordinates."""
    cos, sin = angle.cos(), angle.sin()
    return _matrices(n, device, cos, -sin, 0.0, sin, cos, 0.0)


def _upsample_last(x: torch.Tensor, taps: torch.Tensor) -> torch.Tensor:
    """2x upsampling along the last axis: zero insertion, then the low-pass filter (length L -> 2L)."""
    *lead, length = x.shape
    k = taps.numel()
    y = F.conv_transpose1d(x.reshape(-1, 1, length), taps.view(1, 1, k), stride=2)  # [M, 1, 2L + k - 2]
    return y[..., k // 2 - 1 : k // 2 - 1 + 2 * length].reshape(*lead, 2 * length)


def _downsample_last(x: torch.Tensor, taps: torch.Tensor) -> torch.Tensor:
    """2x downsampling along the last axis: the low-pass filter, then every second sample (length 2L -> L)."""
    *lead, length = x.shape
    k = taps.numel()
    y = F.conv1d(x.reshape(-1, 1, length), taps.view(1, 1, k), stride=2, padding=k // 2 - 1)
    return y.reshape(*lead, y.shape[-1])


def _on_last_two(fn, x: torch.Tensor, taps: torch.Tensor) -> torch.Tensor:
    """Apply a last-axis filter along the width, then along the height."""
    return fn(fn(x, taps).transpose(-1, -2), taps).transpose(-1, -2)


def resample(images: torch.Tensor, inverse: torch.Tensor) -> torch.Tensor:
    """Warp images [N, C, H, W] by per-sample affine maps; inverse [N, 3, 3] maps each output pixel to the
    input point it shows, both in pixel units centred on the image centre (x right, y down).

    As upstream: reflect-pad just enough for the region every sample reads (at most the image size less one),
    upsample 2x with the symlet-6 filter, sample bilinearly (zeros beyond the padding), filter and downsample
    back, crop. The identity map reproduces the image up to float rounding.
    """
    n, c, h, w = images.shape
    device = images.device
    taps = torch.tensor(SYM6, dtype=images.dtype, device=device)
    border = len(SYM6) // 4  # pixels of margin the filters need on each side, after the 2x upsampling: 2 * border
    cx, cy = (w - 1) / 2, (h - 1) / 2

    # How far past each edge of the image the corners of the output land in the input, over the whole batch.
    corners = torch.tensor([[-cx, cx, cx, -cx], [-cy, -cy, cy, cy], [1.0, 1.0, 1.0, 1.0]], device=device)
    reach = (inverse @ corners)[:, :2, :]  # [N, xy, corner]
    extent = torch.stack([(-reach[:, 0]).amax(), (-reach[:, 1]).amax(), reach[:, 0].amax(), reach[:, 1].amax()])
    extent = extent + torch.tensor([2 * border - cx, 2 * border - cy] * 2, device=device)
    limit = torch.tensor([w - 1, h - 1] * 2, dtype=extent.dtype, device=device)
    left, top, right, bottom = (int(v) for v in extent.clamp(min=0).minimum(limit).ceil().tolist())

    images = F.pad(images, [left, right, top, bottom], mode="reflect")
    inverse = _translation(n, device, (left - right) / 2, (top - bottom) / 2) @ inverse
    images = _on_last_two(_upsample_last, images, taps)

    # The map in the 2x image's pixels, whose samples sit half a pixel off the original grid.
    half, double = _scaling(n, device, 0.5, 0.5), _scaling(n, device, 2.0, 2.0)
    inverse = double @ inverse @ half
    inverse = _translation(n, device, -0.5, -0.5) @ inverse @ _translation(n, device, 0.5, 0.5)

    # Into affine_grid's normalised coordinates (align_corners=False): pixel = normalised * size / 2.
    out_h, out_w = 2 * (h + 2 * border), 2 * (w + 2 * border)
    in_h, in_w = images.shape[2], images.shape[3]
    inverse = _scaling(n, device, 2 / in_w, 2 / in_h) @ inverse @ _scaling(n, device, out_w / 2, out_h / 2)
    grid = F.affine_grid(inverse[:, :2, :].to(images.dtype), [n, c, out_h, out_w], align_corners=False)
    images = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    images = _on_last_two(_downsample_last, images, taps)
    return images[:, :, border:-border, border:-border]


class AugmentPipe:
    """EDM's geometric augmentation pipeline; `pipe(images, rng)` returns (augmented images, labels [N, 9]).

    The defaults are the configuration of EDM's, SiD's and Diff-Instruct's `train.py` (multipliers xflip 1e8,
    yflip, scale, rotate_frac, aniso, translate_frac 1; upstream's default spreads); a multiplier of 0 turns a
    transform off (no random draws, zero labels).
    """

    def __init__(
        self,
        p: float,
        xflip: float = 1e8,
        yflip: float = 1.0,
        scale: float = 1.0,
        rotate_frac: float = 1.0,
        aniso: float = 1.0,
        translate_frac: float = 1.0,
        scale_std: float = 0.2,
        rotate_frac_max: float = 1.0,
        aniso_std: float = 0.2,
        aniso_rotate_prob: float = 0.5,
        translate_frac_std: float = 0.125,
    ):
        if p < 0:
            raise ValueError(f"augmentation probability must be >= 0, got {p}")
        self.p = float(p)
        self.xflip, self.yflip = float(xflip), float(yflip)
        self.scale, self.rotate_frac, self.aniso, self.translate_frac = float(scale), float(rotate_frac), float(aniso), float(translate_frac)
        self.scale_std, self.rotate_frac_max = float(scale_std), float(rotate_frac_max)
        self.aniso_std, self.aniso_rotate_prob = float(aniso_std), float(aniso_rotate_prob)
        self.translate_frac_std = float(translate_frac_std)

    @property
    def geometric(self) -> bool:
        """Whether any resampled transform is on (then every call resamples the whole batch, as upstream)."""
        return max(self.scale, self.rotate_frac, self.aniso, self.translate_frac) > 0

    def sample(self, n: int, rng: torch.Generator, device: torch.device | str) -> AugmentParams:
        """Draw the parameters of n samples from rng, in upstream's order (only for transforms that are on)."""
        device = torch.device(device)
        zero = torch.zeros(n, device=device)

        def rand() -> torch.Tensor:
            return torch.rand(n, generator=rng, device=device)

        def randn() -> torch.Tensor:
            return torch.randn(n, generator=rng, device=device)

        def gated(value: torch.Tensor, multiplier: float) -> torch.Tensor:
            return torch.where(rand() < multiplier * self.p, value, torch.zeros_like(value))

        def coin() -> torch.Tensor:
            return torch.randint(2, (n,), generator=rng, device=device).to(torch.float32)

        xflip = gated(coin(), self.xflip) if self.xflip > 0 else zero
        yflip = gated(coin(), self.yflip) if self.yflip > 0 else zero
        scale = gated(randn(), self.scale) if self.scale > 0 else zero
        rotate = gated((rand() * 2 - 1) * (math.pi * self.rotate_frac_max), self.rotate_frac) if self.rotate_frac > 0 else zero
        aniso, aniso_angle = zero, zero
        if self.aniso > 0:
            strength, angle = randn(), (rand() * 2 - 1) * math.pi
            aniso = gated(strength, self.aniso)
            aniso_angle = torch.where(rand() < self.aniso_rotate_prob, angle, zero)
        translate = torch.zeros(n, 2, device=device)
        if self.translate_frac > 0:
            shift = torch.randn(2, n, generator=rng, device=device).t()
            translate = torch.where((rand() < self.translate_frac * self.p)[:, None], shift, torch.zeros_like(shift))
        return AugmentParams(xflip, yflip, scale, rotate, aniso, aniso_angle, translate)

    def inverse_map(self, params: AugmentParams, height: int, width: int) -> torch.Tensor:
        """[N, 3, 3]: output pixel -> input point (centred pixel units) of the geometric transforms, composed in
        upstream's order (scale, rotation, anisotropy, translation)."""
        n, device = params.scale.shape[0], params.scale.device
        inverse = _scaling(n, device, 1.0, 1.0)
        if self.scale > 0:
            s = torch.exp2(params.scale * self.scale_std)
            inverse = inverse @ _scaling(n, device, 1 / s, 1 / s)
        if self.rotate_frac > 0:
            inverse = inverse @ _rotation(n, device, params.rotate)
        if self.aniso > 0:
            s, phi = torch.exp2(params.aniso * self.aniso_std), params.aniso_angle
            inverse = inverse @ _rotation(n, device, -phi) @ _scaling(n, device, 1 / s, s) @ _rotation(n, device, phi)
        if self.translate_frac > 0:
            t = params.translate * self.translate_frac_std
            inverse = inverse @ _translation(n, device, -t[:, 0] * width, -t[:, 1] * height)
        return inverse

    def apply(self, images: torch.Tensor, params: AugmentParams) -> tuple[torch.Tensor, torch.Tensor]:
        """Augment images [N, C, H, W] with given parameters; returns (images, labels [N, 9])."""
        _, _, h, w = images.shape
        images = torch.where(params.xflip.view(-1, 1, 1, 1) == 1, images.flip(3), images)
        images = torch.where(params.yflip.view(-1, 1, 1, 1) == 1, images.flip(2), images)
        if self.geometric:
            images = resample(images, self.inverse_map(params, h, w))
        return images, params.labels()

    def __call__(self, images: torch.Tensor, rng: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Augment a batch [N, C, H, W] with parameters drawn from rng; returns (images, labels [N, 9])."""
        if self.p == 0:
            return images, torch.zeros(images.shape[0], AUGMENT_DIM, device=images.device)
        return self.apply(images, self.sample(images.shape[0], rng, images.device))


def online_augmentation(p: float, online: Denoiser) -> tuple[AugmentPipe | None, list[str]]:
    """The online step's pipeline for spec value online.augment_p = p, and the run's warnings about it.

    Only a network that takes EDM's 9 augment labels is augmented (as in EDM, SiD and Diff-Instruct, whose
    ImageNet runs, with networks without augment_dim, had no augmentation); for any other network with p > 0
    the run goes on without augmentation and says so.
    """
    if p <= 0:
        return None, []
    dim = online.conditioning.augment_dim
    if dim == AUGMENT_DIM:
        return AugmentPipe(p), []
    return None, [
        f"online.augment_p = {p:g} is ignored: the teacher's network takes no augment labels "
        f"(augment_dim {dim}, EDM's pipeline needs {AUGMENT_DIM}); the online step runs without augmentation "
        f"(set online.augment_p=0 to silence this)"
    ]

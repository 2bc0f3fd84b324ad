"""Images to evaluate, as uint8 batches [B, 3, H, W]: a folder of image files, a samples .npz, or a generator.

- Folder: searched recursively for .png/.jpg/.jpeg/.webp/.bmp (case-insensitive), in the order of the relative
  POSIX paths; every file goes through PIL `convert("RGB")`, so grayscale is repeated to 3 channels and an alpha
  channel is dropped (not composited), as EDM's dataset loader and fid.py see them (edm-spec.md section 2.4).
- npz: the 'images' array uint8 [N, H, W, C] that `simcli sample --out x.npz` writes (C = 1 repeated, C = 4 cut).
- Generator: a snapshot or run directory, sampled in memory with seeds seed..seed+n-1, one random stream per seed
  and the class drawn per seed for conditional models (simcli.sampling.run.generator_batches, EDM generate.py),
  then converted as `simcli sample` does (simcli.sampling.images.to_uint8: x * 127.5 + 128, clip, truncate);
  a sample holding NaN or Inf (which would become a black image) fails the evaluation, naming its seeds.

Every source knows its count; `limit` keeps the first n and refuses when fewer exist.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from simcli.data.real_data import SHIPPED_SETS, open_real_images
from simcli.errors import UsageError
from simcli.rundir.layout import list_generators
from simcli.runtime import resolve_device
from simcli.sampling.decode import image_decoder, latent_space
from simcli.sampling.finite import GENERATOR_HINT, check_finite
from simcli.sampling.generator import generator_choice, load_generator, snapshot_sigmas
from simcli.sampling.images import to_uint8
from simcli.sampling.run import generator_batches
from simcli.sampling.sim_release import is_sim_release

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
NPZ_IMAGES_KEY = "images"
RGB = 3
FILE_BATCH_SIZE = 256
GENERATOR_BATCH_SIZE = 1024


def _apply_limit(count: int, limit: int | None, what: str) -> int:
    """The number of images to use: all of them, or the first `limit` (which must exist)."""
    if limit is None:
        return count
    if limit < 1:
        raise UsageError(f"the number of images must be >= 1, got {limit}")
    if limit > count:
        raise UsageError(f"asked for {limit} images but {what} has only {count}")
    return limit


def to_rgb_nchw(images: np.ndarray) -> torch.Tensor:
    """uint8 [B, H, W, C] with C in 1, 3, 4 -> uint8 [B, 3, H, W] (grayscale repeated, alpha dropped)."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
    if x.shape[1] == 1:
        x = x.expand(-1, RGB, -1, -1)
    return x[:, :RGB].contiguous()


class ImageSource:
    """Base: `len()` images in a fixed order, delivered by `batches(batch_size)`; `description` says where from."""

    description: str = ""
    default_batch_size: int = FILE_BATCH_SIZE

    def __len__(self) -> int:
        raise NotImplementedError

    def batches(self, batch_size: int | None = None) -> Iterator[torch.Tensor]:
        """uint8 [B, 3, H, W] batches covering the images in order."""
        raise NotImplementedError


# ---------------------------------------------------------------------------------------------- folder


def list_image_files(root: Path) -> list[Path]:
    """Image files under root (recursive), sorted by their relative POSIX path."""
    found = [p for p in Path(root).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def _image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the file header."""
    try:
        with Image.open(path) as im:
            return im.size
    except (UnidentifiedImageError, OSError) as exc:
        raise UsageError(f"cannot read image {path}: {exc}") from None


def _read_rgb(path: Path) -> np.ndarray:
    """uint8 [H, W, 3] of one image file."""
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError) as exc:
        raise UsageError(f"cannot read image {path}: {exc}") from None


class FolderImages(ImageSource):
    """Image files of one size found recursively under a folder."""

    def __init__(self, root: Path, limit: int | None = None):
        self.root = Path(root)
        if not self.root.is_dir():
            raise UsageError(f"image folder not found: {self.root}")
        files = list_image_files(self.root)
        if not files:
            raise UsageError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {self.root}")
        self.files = files[: _apply_limit(len(files), limit, f"folder {self.root}")]
        first = _image_size(self.files[0])
        for path in self.files[1:]:
            size = _image_size(path)
            if size != first:
                raise UsageError(
                    f"images differ in size: {self.files[0]} is {first[0]}x{first[1]} "
                    f"but {path} is {size[0]}x{size[1]}",
                    hint="resize them to one size first",
                )
        self.size = first  # (width, height)
        self.description = f"folder {self.root} ({len(self.files)} images, {first[0]}x{first[1]})"

    def __len__(self) -> int:
        return len(self.files)

    def batches(self, batch_size: int | None = None) -> Iterator[torch.Tensor]:
        step = batch_size or self.default_batch_size
        for start in range(0, len(self.files), step):
            chunk = self.files[start : start + step]
            arrays = [_read_rgb(p) for p in chunk]
            for path, a in zip(chunk, arrays, strict=True):
                if (a.shape[1], a.shape[0]) != self.size:
                    raise UsageError(f"image {path} changed size while being read")
            yield to_rgb_nchw(np.stack(arrays))


# ---------------------------------------------------------------------------------------------- npz


class NpzImages(ImageSource):
    """The 'images' array uint8 [N, H, W, C] of an .npz file (as `simcli sample` writes it)."""

    def __init__(self, path: Path, limit: int | None = None):
        self.path = Path(path)
        if not self.path.is_file():
            raise UsageError(f"images file not found: {self.path}")
        try:
            with np.load(self.path, allow_pickle=False) as data:
                if NPZ_IMAGES_KEY not in data.files and "samples" in data.files:
                    raise UsageError(f"{self.path} holds vector samples, not images",
                                     hint="score them against their mixture with --teacher gmm-...")
                if NPZ_IMAGES_KEY not in data.files:
                    found = ", ".join(data.files) or "nothing"
                    raise UsageError(f"{self.path} has no '{NPZ_IMAGES_KEY}' array (it has: {found})",
                                     hint="write one with 'simcli sample --out FILE.npz'")
                images = data[NPZ_IMAGES_KEY]
        except (OSError, ValueError, zipfile.BadZipFile) as exc:
            raise UsageError(f"cannot read {self.path} as an .npz file: {exc}") from None
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3, 4):
            raise UsageError(f"'{NPZ_IMAGES_KEY}' in {self.path} is {images.dtype} {tuple(images.shape)}",
                             hint="expected uint8 [N, H, W, C] with C = 1, 3 or 4")
        self._keep(images, str(self.path), limit)

    def _keep(self, images: np.ndarray, name: str, limit: int | None) -> None:
        self.images = images[: _apply_limit(len(images), limit, name)]
        h, w = self.images.shape[1:3]
        self.description = f"{name} ({len(self.images)} images, {w}x{h})"

    @classmethod
    def of(cls, images: np.ndarray, name: str, limit: int | None = None) -> NpzImages:
        """Images held in memory, uint8 [N, H, W, C], named `name`."""
        source = cls.__new__(cls)
        source.path = Path(name)
        source._keep(images, name, limit)
        return source

    def __len__(self) -> int:
        return len(self.images)

    def batches(self, batch_size: int | None = None) -> Iterator[torch.Tensor]:
        step = batch_size or self.default_batch_size
        for start in range(0, len(self.images), step):
            yield to_rgb_nchw(self.images[start : start + step])


def shipped_images(name: str, limit: int | None = None) -> NpzImages:
    """A shipped real set (simcli.data.real_data.SHIPPED_SETS) as uint8 images, as `simcli sample` would write them."""
    data = open_real_images(name)
    return NpzImages.of(to_uint8(data.images(np.arange(data.num_images))), name, limit)


# ---------------------------------------------------------------------------------------------- generator


class GeneratorImages(ImageSource):
    """n images of a one-step generator, seeds seed..seed+n-1, generated in memory on a device."""

    default_batch_size = GENERATOR_BATCH_SIZE

    def __init__(self, generator: str | Path, n: int, seed: int = 0, device: str = "auto",
                 class_label: int | None = None):
        if n < 1:
            raise UsageError(f"the number of images must be >= 1, got {n}")
        self.device = resolve_device(device)
        self.net, self.meta, self.file = load_generator(generator, self.device)
        self.sigmas = snapshot_sigmas(self.meta, self.file)
        if self.net.conditioning.takes_text:
            raise UsageError(f"{self.file} is a text-to-image generator: its images need prompts",
                             hint="give --prompts FILE with --clip-score or --aesthetic (it is sampled on them)")
        latents = latent_space(self.meta["architecture"], str(self.file))
        self.decode = image_decoder(self.meta["architecture"], self.device, str(self.file))  # latents: through the VAE
        if len(self.net.sample_shape) != 3 or (latents is None and self.net.sample_shape[0] not in (1, RGB)):
            raise UsageError(f"{self.file} generates {tuple(self.net.sample_shape)} samples, not images")
        self.n, self.seed, self.class_label = n, seed, class_label
        self.description = f"generator {self.file} (seeds {seed}..{seed + n - 1})"
        self.choice = generator_choice(generator, self.file)  # which file a run directory's newest snapshot was

    def __len__(self) -> int:
        return self.n

    def batches(self, batch_size: int | None = None) -> Iterator[torch.Tensor]:
        step = batch_size or self.default_batch_size
        first = self.seed
        for x, _ in generator_batches(self.net, self.sigmas, self.n, self.seed, step, self.device,
                                      self.class_label):
            check_finite(x, range(first, first + len(x)), f"generator {self.file}", "nothing was scored", GENERATOR_HINT)
            first += len(x)
            yield to_rgb_nchw(self.decode(x))


# ---------------------------------------------------------------------------------------------- dispatch


def is_generator_path(path: Path) -> bool:
    """A generator snapshot file or a run directory holding one."""
    path = Path(path)
    return path.suffix == ".safetensors" if path.is_file() else bool(list_generators(path))


def open_images(
    path: str | Path, *, limit: int | None = None, seed: int = 0, device: str = "auto", class_label: int | None = None
) -> ImageSource:
    """The image source at `path`: generator (needs `limit` images), .npz samples, or a folder of image files."""
    if str(path) in SHIPPED_SETS:  # digits-train, digits-test: the digits teacher's own images
        return shipped_images(str(path), limit)
    path = Path(path)
    if is_sim_release(path):  # before a 2.45 GB download: scored from its samples, as simcli's own text-to-image runs
        raise UsageError(f"{path} is the SIM authors' text-to-image generator: its images need prompts",
                         hint=f"simcli eval --generator {path} --prompts FILE --clip-score --aesthetic samples it on "
                              "the prompts (or score samples: simcli sample ... --out samples.npz, eval --samples)")
    if not path.exists():
        raise UsageError(f"not found: {path}", hint="pass a folder of images, a samples .npz or a generator")
    if is_generator_path(path):
        if limit is None:
            raise UsageError(f"{path} is a generator: say how many images to generate")
        return GeneratorImages(path, limit, seed=seed, device=device, class_label=class_label)
    if path.is_dir():
        return FolderImages(path, limit)
    if path.suffix.lower() == ".npz":
        return NpzImages(path, limit)
    raise UsageError(f"cannot take images from {path}",
                     hint="pass a folder of images, a samples .npz or a generator snapshot / run directory")

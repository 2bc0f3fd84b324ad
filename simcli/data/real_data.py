"""Real training images for the adversarial term (`simcli distill --data SOURCE`), checked before a run starts.

SOURCE is one of:

- a folder of images (.png, .jpg, .jpeg, .webp), searched recursively and sorted by relative POSIX path; class
  labels from a `dataset.json` at its root, in EDM's dataset_tool.py layout: {"labels": [["a/b.png", 3], ...]} or
  {"labels": null};
- an EDM dataset_tool `.zip`: the same, inside the zip, read lazily (never extracted). Member names that are
  absolute or climb with '..' are refused, and so is any member whose declared uncompressed size exceeds
  MAX_FILE_BYTES (zipfile never returns more than the declared size, so the check bounds what is read);
- an `.npz` (loaded with allow_pickle=False) holding `images` (or `x`): uint8 or float in [-1, 1], [N, H, W, C],
  [N, C, H, W] or [N, H, W]; optional `labels`: ints [N] or one-hot [N, K];
- a shipped name: `digits-train` / `digits-test`, the digits teacher's own data (simcli.data.digits) with its
  scaling x / 8 - 1 and shape [N, 1, 8, 8], exactly as the teacher was trained on it.

Names inside folders and zips whose path has a part starting with '.' or named `__MACOSX` are skipped (macOS
resource forks and editor droppings, never images). A set's channel count is 3 when any image is RGB or palette
(grayscale images among them are repeated to 3 channels, as PIL's convert('RGB') and EDM's dataset_tool do), and
1 when all are grayscale; images with an alpha channel, or 16-bit and other modes, are refused.

Validation depth. `open_real_images` checks everything that is cheap to check for every file, so that a bad data set
fails before a run directory is touched: the labels file (well-formed, every image labelled, every named file
present), and for every image its size, its mode and PIL's `verify()` (which for PNG reads every chunk and checks
its CRC, so truncated or damaged PNGs fail here; for JPEG and WebP it reads the header only). A full decode of
every image would make opening a million-image set take an hour, so pixels are decoded only when first needed;
a file that fails then raises UsageError naming it. Sets small enough to keep in memory (see Caching) are decoded
in full at their first draw (or at `preload()`), so their decode errors appear at the run's first iteration.

Caching. Folder and zip sets of at most DECODE_ALL_BYTES of uint8 pixels (2 GiB: CIFAR-10 is 150 MiB, ImageNet
64x64 3.7 GiB) are decoded once, in full, into one uint8 array [N, C, H, W]; bigger sets keep an LRU of decoded
images of the same byte budget and decode the rest per draw. npz and shipped sets are arrays already.

Draws (RealBatchStream) are uniform with replacement, as SiDA and DMD2 draw real images; no class balancing.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import zipfile
import zlib
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from simcli.data.digits import load_digits_split
from simcli.errors import UsageError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
SHIPPED_SETS = ("digits-train", "digits-test")
DIGITS_CLASSES = 10
LABELS_FILE = "dataset.json"
MAX_FILE_BYTES = 64 * 2**20
"""Largest image file, or declared size of a zip member, that is read (zip bombs, stray huge files)."""
MAX_LABELS_BYTES = 1024 * 2**20
"""Largest dataset.json that is read (ImageNet's is about 50 MB)."""
MAX_CLASSES = 2**20
"""Largest class count a label may imply (a one-hot row is this wide)."""
DECODE_ALL_BYTES = 2 * 2**30
"""uint8 pixel budget: sets at most this big are decoded once into memory; bigger ones keep an LRU of this size."""
FINGERPRINT_FORMAT = "simcli-real-images/1"
CHANNEL_CHOICES = (1, 3)
NPY_MAGIC = b"\x93NUMPY"
ZIP_MAGIC = b"PK"

DATA_HINT = ("pass a folder of images, an EDM dataset_tool .zip, an .npz with an 'images' array, "
             f"or a shipped name: {', '.join(SHIPPED_SETS)}")
LABELS_HINT = 'use EDM\'s dataset_tool.py layout: {"labels": [["relative/path.png", 3], ...]}, or {"labels": null}'
IMAGE_HINT = "re-encode or remove the file (EDM's dataset_tool.py rewrites a whole set as PNGs)"
ZIP_HINT = "rebuild the zip with EDM's dataset_tool.py"
NPZ_HINT = ("save the images with numpy.savez as a numeric array 'images': uint8 (or float in [-1, 1]) "
            "[N, H, W, C] or [N, C, H, W], and optional int 'labels' [N]")
READ_HINT = "check the file and its permissions"
RESIZE_HINT = "give every image one size, e.g. with EDM's dataset_tool.py --resolution=WxH"

_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
_MODE_CHANNELS = {"L": 1, "1": 1, "RGB": 3, "P": 3}
_DRIVE = re.compile(r"^[A-Za-z]:")


# ---------------------------------------------------------------------------------------------- pixels


def to_float_images(batch: np.ndarray) -> torch.Tensor:
    """float32 [n, C, H, W] in [-1, 1] of a [n, C, H, W] batch: uint8 as x / 127.5 - 1 (EDM), floats as they are."""
    if batch.dtype == np.uint8:
        return torch.from_numpy(np.ascontiguousarray(batch)).to(torch.float32) / 127.5 - 1
    return torch.from_numpy(np.array(batch, dtype=np.float32, copy=True))


class _Pixels(Protocol):
    """Where a set's pixels come from."""

    def read(self, indices: np.ndarray) -> torch.Tensor: ...

    def preload(self) -> None: ...


@dataclass(frozen=True, eq=False)
class _ArrayPixels:
    """Pixels held in memory: [N, C, H, W] uint8, or float32 in [-1, 1] (npz and shipped sets)."""

    array: np.ndarray

    def read(self, indices: np.ndarray) -> torch.Tensor:
        """float32 [n, C, H, W] in [-1, 1] of the images at `indices`."""
        return to_float_images(self.array[indices])

    def preload(self) -> None:
        """Nothing to do: the pixels are in memory."""


# ---------------------------------------------------------------------------------------------- encoded files


def _pil_reason(exc: BaseException) -> str:
    """A short reason from a PIL failure, without the BytesIO repr that PIL puts in some messages."""
    if isinstance(exc, UnidentifiedImageError):
        return "PIL does not recognise its format"
    text = re.sub(r"<_io\.BytesIO object at 0x[0-9a-f]+>", "it", str(exc)).strip()
    return text or type(exc).__name__


def mode_channels(mode: str, where: str) -> int:
    """Channels a PIL mode gives (L and 1: 1; RGB and palette: 3); UsageError for alpha and other modes."""
    if mode in _ALPHA_MODES:
        raise UsageError(f"{where}: has an alpha channel (PIL mode {mode})",
                         hint="flatten it onto a background and save it as RGB, e.g. with PIL's Image.convert('RGB')")
    if mode not in _MODE_CHANNELS:
        raise UsageError(f"{where}: PIL mode {mode} is neither 8-bit grayscale (L) nor RGB",
                         hint="convert it to 8-bit L or RGB, e.g. with PIL's Image.convert('RGB')")
    return _MODE_CHANNELS[mode]


def probe_image(data: bytes, where: str) -> tuple[tuple[int, int], int]:
    """(width, height) and channel count of one encoded image, after PIL's verify(); UsageError naming `where`."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            size, mode = im.size, im.mode
            im.verify()
    except Exception as exc:  # hostile bytes make PIL raise many types (OSError, SyntaxError, struct.error, ...)
        raise UsageError(f"{where}: not a readable image ({_pil_reason(exc)})", hint=IMAGE_HINT) from None
    return (int(size[0]), int(size[1])), mode_channels(mode, where)


def decode_image(data: bytes, where: str, channels: int, size: tuple[int, int]) -> np.ndarray:
    """uint8 [C, H, W] of one encoded image that was probed as `size` (W, H) in a set of `channels`; UsageError
    naming `where` when it does not decode or no longer matches what was probed."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            mode, got = im.mode, im.size
            pixels = np.asarray(im.convert("L" if channels == 1 else "RGB"))
    except Exception as exc:  # as in probe_image
        raise UsageError(f"{where}: cannot decode it ({_pil_reason(exc)})", hint=IMAGE_HINT) from None
    if mode_channels(mode, where) > channels or tuple(got) != tuple(size):
        raise UsageError(f"{where}: changed since the data set was opened ({got[0]}x{got[1]} {mode})",
                         hint="do not edit the data set while simcli runs")
    return np.ascontiguousarray(pixels.reshape(size[1], size[0], channels).transpose(2, 0, 1))


class _Reader(Protocol):
    """Reads the encoded bytes of a set's files by relative name."""

    def where(self, name: str) -> str: ...

    def read(self, name: str, limit: int | None = None) -> bytes: ...


def _too_big(where: str, size: int, limit: int) -> UsageError:
    """The error for a file (or zip member) of `size` bytes over `limit`."""
    return UsageError(f"{where}: {size} bytes, over the {limit} bytes such a file may have",
                      hint="files this big are refused (a zip bomb, or not part of a training set)")


@dataclass(frozen=True)
class _FolderReader:
    """Files under a folder."""

    root: Path

    def where(self, name: str) -> str:
        return str(self.root / name)

    def read(self, name: str, limit: int | None = None) -> bytes:
        """The file's bytes; UsageError when it is over `limit` (default MAX_FILE_BYTES) or unreadable."""
        path, limit = self.root / name, MAX_FILE_BYTES if limit is None else limit
        try:
            size = path.stat().st_size
            if size > limit:
                raise _too_big(str(path), size, limit)
            return path.read_bytes()
        except OSError as exc:
            raise UsageError(f"{path}: cannot read it ({exc.strerror or exc})", hint=READ_HINT) from None


def open_zip(path: Path) -> zipfile.ZipFile:
    """The zip at path, or UsageError naming it."""
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise UsageError(f"{path}: not a readable zip ({exc})", hint=ZIP_HINT) from None


def read_member(archive: zipfile.ZipFile, name: str, where: str, limit: int | None = None) -> bytes:
    """The bytes of one zip member, refusing a declared size over `limit` (default MAX_FILE_BYTES) before reading
    anything."""
    limit = MAX_FILE_BYTES if limit is None else limit
    try:
        info = archive.getinfo(name)
    except KeyError:
        raise UsageError(f"{where}: no longer in the zip", hint="do not edit the data set while simcli runs") from None
    if info.file_size > limit:
        raise _too_big(where, info.file_size, limit)
    try:
        with archive.open(info) as member:
            data = member.read(limit + 1)
    except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError, RuntimeError, zlib.error) as exc:
        raise UsageError(f"{where}: cannot read it from the zip ({exc})", hint=ZIP_HINT) from None
    if len(data) > limit:
        raise _too_big(where, len(data), limit)
    return data


class _ZipReader:
    """Members of a zip, through one handle per process (reopened after a fork)."""

    def __init__(self, path: Path):
        self.path = path
        self._archive: zipfile.ZipFile | None = None
        self._pid = -1

    def where(self, name: str) -> str:
        return f"{name} in {self.path}"

    def read(self, name: str, limit: int | None = None) -> bytes:
        """The member's bytes (see read_member)."""
        if self._archive is None or self._pid != os.getpid():
            self._archive, self._pid = open_zip(self.path), os.getpid()
        return read_member(self._archive, name, self.where(name), limit)


class _FilePixels:
    """Pixels of encoded files, decoded when first needed: all at once into uint8 [N, C, H, W] when they fit in
    `budget` bytes, else per image through an LRU of `budget` bytes."""

    def __init__(self, names: Sequence[str], reader: _Reader, channels: int, size: tuple[int, int], budget: int):
        self.names, self.reader, self.channels, self.size = tuple(names), reader, channels, size
        self.image_bytes = channels * size[0] * size[1]
        self.decode_all = len(self.names) * self.image_bytes <= budget
        self.capacity = max(1, budget // self.image_bytes)
        self._all: np.ndarray | None = None
        self._lru: OrderedDict[int, np.ndarray] = OrderedDict()

    def _decode(self, index: int) -> np.ndarray:
        name = self.names[index]
        return decode_image(self.reader.read(name), self.reader.where(name), self.channels, self.size)

    def preload(self) -> None:
        """Decode the whole set now when it fits the budget (its decode errors surface here)."""
        if self.decode_all and self._all is None:
            pixels = np.empty((len(self.names), self.channels, self.size[1], self.size[0]), dtype=np.uint8)
            for i in range(len(self.names)):
                pixels[i] = self._decode(i)
            self._all = pixels

    def _cached(self, index: int) -> np.ndarray:
        if index in self._lru:
            self._lru.move_to_end(index)
            return self._lru[index]
        pixels = self._decode(index)
        self._lru[index] = pixels
        while len(self._lru) > self.capacity:
            self._lru.popitem(last=False)
        return pixels

    def read(self, indices: np.ndarray) -> torch.Tensor:
        """float32 [n, C, H, W] in [-1, 1] of the images at `indices` (checked by the caller)."""
        if self.decode_all:
            self.preload()
            return to_float_images(self._all[indices])
        batch = np.empty((len(indices), self.channels, self.size[1], self.size[0]), dtype=np.uint8)
        for k, index in enumerate(indices):
            batch[k] = self._cached(int(index))
        return to_float_images(batch)


# ---------------------------------------------------------------------------------------------- the data set


@dataclass(frozen=True, eq=False)
class RealImages:
    """A checked set of real images: its size, shape, classes, a fingerprint, and batches of pixels and labels.

    fingerprint: sha256 hex that changes when the set does, cheap to compute. Folders: names, byte sizes and labels;
    zips: names, declared sizes, CRC-32s and labels; npz and shipped sets: the arrays' bytes.
    """

    source: str
    kind: str  # "folder", "zip", "npz" or "shipped"
    num_images: int
    resolution: tuple[int, int]  # (H, W)
    channels: int
    label_dim: int  # 0: unlabelled; else classes 0..label_dim-1 (label_dim = the largest label + 1)
    fingerprint: str
    _pixels: _Pixels = field(repr=False)
    _label_ids: np.ndarray | None = field(repr=False)  # int64 [N], or None when unlabelled

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image, as a teacher's sample_shape."""
        return (self.channels, *self.resolution)

    def _check_indices(self, indices: np.ndarray | Sequence[int]) -> np.ndarray:
        """indices as int64 [n], each in 0..num_images-1 (IndexError otherwise: a caller's bug, not the user's)."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= self.num_images):
            raise IndexError(f"image indices must lie in 0..{self.num_images - 1}")
        return idx

    def images(self, indices: np.ndarray | Sequence[int]) -> torch.Tensor:
        """float32 [n, C, H, W] in [-1, 1] (uint8 pixels as x / 127.5 - 1) of the images at `indices`, on the CPU."""
        return self._pixels.read(self._check_indices(indices))

    def labels(self, indices: np.ndarray | Sequence[int], label_dim: int | None = None) -> torch.Tensor | None:
        """One-hot float32 [n, label_dim] of the images at `indices`; None when the set is unlabelled or label_dim
        is 0. label_dim (default: the set's) may be wider than the set's, e.g. a teacher's class count."""
        width = self.label_dim if label_dim is None else label_dim
        if self._label_ids is None or width == 0:
            return None
        if width < self.label_dim:
            raise ValueError(f"label_dim {width} is narrower than the data's {self.label_dim} classes")
        ids = torch.from_numpy(self._label_ids[self._check_indices(indices)])
        return torch.nn.functional.one_hot(ids, width).to(torch.float32)

    def preload(self) -> None:
        """Decode the whole set now when it fits the memory budget (else a no-op); draws call it themselves."""
        self._pixels.preload()


# ---------------------------------------------------------------------------------------------- labels


def _short(value: object) -> str:
    """A JSON value as at most 60 characters, for a message."""
    text = json.dumps(value, ensure_ascii=True)
    return text if len(text) <= 60 else text[:57] + "..."


def parse_labels_file(data: bytes, where: str) -> dict[str, int] | None:
    """{relative name: class} from an EDM dataset.json's bytes, or None for {"labels": null}; UsageError naming
    `where` when it is malformed, a label is not an int >= 0 (below MAX_CLASSES), or a name repeats."""
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise UsageError(f"{where}: not valid JSON ({exc})", hint=LABELS_HINT) from None
    if not isinstance(doc, dict) or "labels" not in doc:
        raise UsageError(f"{where}: has no 'labels' entry", hint=LABELS_HINT)
    entries = doc["labels"]
    if entries is None:
        return None
    if not isinstance(entries, list):
        raise UsageError(f"{where}: 'labels' is {_short(entries)}, neither a list nor null", hint=LABELS_HINT)
    labels: dict[str, int] = {}
    for i, entry in enumerate(entries):
        if not (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], str)):
            raise UsageError(f"{where}: labels entry {i} is {_short(entry)}, not a [\"path\", class] pair",
                             hint=LABELS_HINT)
        name, label = entry[0].replace("\\", "/"), entry[1]
        if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < MAX_CLASSES:
            raise UsageError(f"{where}: the label of {name} is {_short(label)}, not an integer class >= 0",
                             hint="simcli reads class labels only: integers 0, 1, 2, ...")
        if name in labels:
            raise UsageError(f"{where}: {name} is labelled twice", hint=LABELS_HINT)
        labels[name] = label
    return labels


def match_labels(names: Sequence[str], labels: dict[str, int], where_labels: str, where: Callable[[str], str],
                 source: str) -> np.ndarray:
    """int64 [N] classes of `names` in order; UsageError when the labels name a file that is not an image of the
    set, or an image has no label."""
    present = set(names)
    for name in labels:
        if name not in present:
            raise UsageError(f"{where_labels}: names {name}, which is not an image in {source}",
                             hint="remove the entry, or add the image (.png, .jpg, .jpeg, .webp)")
    for name in names:
        if name not in labels:
            raise UsageError(f"{where(name)}: has no label in {where_labels}", hint="label every image, or remove it")
    return np.array([labels[name] for name in names], dtype=np.int64)


def _label_dim(ids: np.ndarray | None) -> int:
    """Class count of int labels: the largest + 1 (classes need not all occur); 0 when unlabelled."""
    return 0 if ids is None else int(ids.max()) + 1


# ---------------------------------------------------------------------------------------------- folders and zips


def is_image_name(name: str) -> bool:
    """Whether a relative POSIX name is a training image: an image suffix, and no hidden or __MACOSX part."""
    parts = name.split("/")
    if any(part.startswith(".") or part == "__MACOSX" for part in parts):
        return False
    return name.lower().endswith(IMAGE_SUFFIXES)


@dataclass(frozen=True)
class _Member:
    """One encoded image of a folder or zip: relative POSIX name, byte size, CRC-32 (0 in folders)."""

    name: str
    size: int
    crc: int = 0


def fingerprint_members(kind: str, members: Sequence[_Member], ids: np.ndarray | None) -> str:
    """sha256 hex of a folder's or zip's listing: names, sizes, CRCs and labels."""
    digest = hashlib.sha256(f"{FINGERPRINT_FORMAT}\n{kind}\n".encode())
    for i, member in enumerate(members):
        label = None if ids is None else int(ids[i])
        digest.update((json.dumps([member.name, member.size, member.crc, label]) + "\n").encode())
    return digest.hexdigest()


def _open_file_set(source: str, kind: str, members: list[_Member], reader: _Reader, labels_data: bytes | None,
                   where_labels: str, searched: str) -> RealImages:
    """A folder or zip set: labels parsed and matched first (cheap), then every image probed."""
    if not members:
        raise UsageError(f"no images in {source}", hint=f"{searched} for {', '.join(IMAGE_SUFFIXES)} files")
    names = [m.name for m in members]
    labels = None if labels_data is None else parse_labels_file(labels_data, where_labels)
    ids = None if labels is None else match_labels(names, labels, where_labels, reader.where, source)
    first, size, channels = names[0], (0, 0), 0
    for k, name in enumerate(names):
        got, got_channels = probe_image(reader.read(name), reader.where(name))
        if k == 0:
            size = got
        elif got != size:
            raise UsageError(f"{reader.where(name)}: is {got[0]}x{got[1]}, but {first} is {size[0]}x{size[1]}",
                             hint=RESIZE_HINT)
        channels = max(channels, got_channels)
    pixels = _FilePixels(names, reader, channels, size, DECODE_ALL_BYTES)
    return RealImages(source, kind, len(names), (size[1], size[0]), channels, _label_dim(ids),
                      fingerprint_members(kind, members, ids), pixels, ids)


def open_folder(root: Path) -> RealImages:
    """A folder of images, searched recursively, in the order of their relative POSIX paths."""
    found = []
    for path in root.rglob("*"):
        name = path.relative_to(root).as_posix()
        if is_image_name(name) and path.is_file():
            found.append(_Member(name, path.stat().st_size))
    members = sorted(found, key=lambda m: m.name)
    labels_path = root / LABELS_FILE
    labels_data = None
    if labels_path.is_file():
        labels_data = _FolderReader(root).read(LABELS_FILE, MAX_LABELS_BYTES)
    return _open_file_set(str(root), "folder", members, _FolderReader(root), labels_data, str(labels_path),
                          "the folder is searched recursively")


def check_member_name(name: str, where: str) -> None:
    """UsageError for a zip member name that is absolute, has a drive, climbs with '..', or holds a NUL."""
    parts = re.split(r"[/\\]", name)
    if name.startswith(("/", "\\")) or _DRIVE.match(name) or ".." in parts or "\x00" in name:
        raise UsageError(f"{where}: member {name!r} has an unsafe name (absolute, or going up with '..')",
                         hint=f"simcli never extracts zips but refuses such names; {ZIP_HINT}")


def open_zip_set(path: Path) -> RealImages:
    """An EDM dataset_tool zip: its images, sorted by name, and its root dataset.json, read without extracting."""
    archive = open_zip(path)
    with archive:
        members, seen, labels_data = [], set(), None
        for info in archive.infolist():
            check_member_name(info.filename, str(path))
            if info.filename in seen:
                raise UsageError(f"{path}: member {info.filename!r} appears twice", hint=ZIP_HINT)
            seen.add(info.filename)
            if info.is_dir():
                continue
            if info.flag_bits & 0x1:
                raise UsageError(f"{info.filename} in {path}: is encrypted", hint="use a zip without a password")
            if info.filename == LABELS_FILE:
                labels_data = read_member(archive, LABELS_FILE, f"{LABELS_FILE} in {path}", MAX_LABELS_BYTES)
            elif is_image_name(info.filename):
                if info.file_size > MAX_FILE_BYTES:
                    raise _too_big(f"{info.filename} in {path}", info.file_size, MAX_FILE_BYTES)
                members.append(_Member(info.filename, info.file_size, info.CRC))
    members.sort(key=lambda m: m.name)
    return _open_file_set(str(path), "zip", members, _ZipReader(path), labels_data, f"{LABELS_FILE} in {path}",
                          "the zip is searched")


# ---------------------------------------------------------------------------------------------- arrays


def _npz_array(archive: np.lib.npyio.NpzFile, key: str, path: Path) -> np.ndarray:
    """One array of an npz; UsageError for object arrays (allow_pickle=False) and damaged members."""
    try:
        return archive[key]
    except ValueError as exc:
        if "allow_pickle" in str(exc):
            raise UsageError(f"{path}: array '{key}' holds Python objects, which simcli does not load "
                             "(allow_pickle=False)", hint=NPZ_HINT) from None
        raise UsageError(f"{path}: cannot read array '{key}' ({exc})", hint=NPZ_HINT) from None
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise UsageError(f"{path}: cannot read array '{key}' ({exc})", hint=NPZ_HINT) from None


def _channels_last(shape: tuple[int, ...]) -> bool:
    """Whether a 4-d image array is [N, H, W, C]: its last axis looks like channels (1, 3, 4) and, when axis 1 also
    does, by preference (the layout `simcli sample` and EDM's tools write)."""
    return shape[-1] in (1, 3, 4) or shape[1] not in (1, 3, 4)


def array_images(raw: np.ndarray, path: Path) -> np.ndarray:
    """An npz's image array as [N, C, H, W]: uint8, or float32 checked finite and in [-1, 1]."""
    if raw.ndim == 3:
        raw = raw[:, None]
    elif raw.ndim == 4:
        if _channels_last(raw.shape):
            raw = raw.transpose(0, 3, 1, 2)
    else:
        raise UsageError(f"{path}: images have shape {list(raw.shape)}, not [N, H, W, C] or [N, C, H, W]",
                         hint=NPZ_HINT)
    if raw.shape[0] == 0:
        raise UsageError(f"no images in {path} (the array is empty)", hint=NPZ_HINT)
    if raw.shape[1] not in CHANNEL_CHOICES:
        raise UsageError(f"{path}: images have {raw.shape[1]} channels, not 1 (grayscale) or 3 (RGB)",
                         hint="drop an alpha channel; " + NPZ_HINT)
    if raw.dtype == np.uint8:
        return np.ascontiguousarray(raw)
    if not np.issubdtype(raw.dtype, np.floating):
        raise UsageError(f"{path}: images are {raw.dtype}, neither uint8 nor float", hint=NPZ_HINT)
    pixels = np.ascontiguousarray(raw, dtype=np.float32)
    if not np.isfinite(pixels).all() or pixels.min() < -1 or pixels.max() > 1:
        raise UsageError(f"{path}: float images must be finite and in [-1, 1] (they span {pixels.min()} to "
                         f"{pixels.max()})", hint="scale them as x / 127.5 - 1, or save uint8 pixels")
    return pixels


def array_labels(raw: np.ndarray, count: int, path: Path) -> tuple[np.ndarray, int]:
    """(int64 [N] classes, label_dim) of an npz's labels: ints >= 0 [N] (label_dim: the largest + 1), or one-hot
    [N, K] (label_dim K)."""
    if raw.shape[:1] != (count,):
        raise UsageError(f"{path}: labels have shape {list(raw.shape)}, but there are {count} images", hint=NPZ_HINT)
    if raw.ndim == 1:
        if not np.issubdtype(raw.dtype, np.integer):
            raise UsageError(f"{path}: labels are {raw.dtype}, not integers", hint=NPZ_HINT)
        if raw.min() < 0 or raw.max() >= MAX_CLASSES:
            raise UsageError(f"{path}: labels span {raw.min()} to {raw.max()}, not classes 0, 1, 2, ...", hint=NPZ_HINT)
        ids = raw.astype(np.int64)
        return ids, _label_dim(ids)
    numeric = np.issubdtype(raw.dtype, np.integer) or np.issubdtype(raw.dtype, np.floating)
    if raw.ndim != 2 or not numeric or not 0 < raw.shape[1] <= MAX_CLASSES:
        raise UsageError(f"{path}: labels have shape {list(raw.shape)} and type {raw.dtype}, neither ints [N] nor "
                         "one-hot [N, K]", hint=NPZ_HINT)
    if not (((raw == 0) | (raw == 1)).all() and (raw.sum(axis=1) == 1).all()):
        raise UsageError(f"{path}: labels [N, K] are not one-hot (one 1 per row, zeros elsewhere)", hint=NPZ_HINT)
    return raw.argmax(axis=1).astype(np.int64), int(raw.shape[1])


def fingerprint_arrays(kind: str, arrays: dict[str, np.ndarray]) -> str:
    """sha256 hex of named arrays: their names, dtypes, shapes and bytes."""
    digest = hashlib.sha256(f"{FINGERPRINT_FORMAT}\n{kind}\n".encode())
    for key, array in arrays.items():
        digest.update(f"{key}\t{array.dtype.str}\t{list(array.shape)}\n".encode())
        digest.update(memoryview(np.ascontiguousarray(array)).cast("B"))
    return digest.hexdigest()


def check_npz_magic(path: Path) -> None:
    """UsageError unless the file starts like a zip (an .npz), naming a bare .npy array apart."""
    try:
        with path.open("rb") as file:
            magic = file.read(len(NPY_MAGIC))
    except OSError as exc:
        raise UsageError(f"{path}: cannot read it ({exc.strerror or exc})", hint=READ_HINT) from None
    if magic == NPY_MAGIC:
        raise UsageError(f"{path}: holds one bare .npy array, not an .npz archive with an 'images' array",
                         hint=NPZ_HINT)
    if not magic.startswith(ZIP_MAGIC):
        raise UsageError(f"{path}: not an .npz archive (an .npz is a zip of .npy arrays)", hint=NPZ_HINT)


def open_npz(path: Path) -> RealImages:
    """An npz of images ('images' or 'x') and optional 'labels', loaded with allow_pickle=False."""
    check_npz_magic(path)
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise UsageError(f"{path}: not a readable .npz ({exc})", hint=NPZ_HINT) from None
    if not isinstance(archive, np.lib.npyio.NpzFile):  # unreachable after the magic check; kept as a guard
        raise UsageError(f"{path}: not an .npz archive with an 'images' array", hint=NPZ_HINT)
    with archive:
        key = next((k for k in ("images", "x") if k in archive.files), None)
        if key is None:
            raise UsageError(f"{path}: has no 'images' (or 'x') array; it holds {', '.join(archive.files) or 'none'}",
                             hint=NPZ_HINT)
        raw = {key: _npz_array(archive, key, path)}
        if "labels" in archive.files:
            raw["labels"] = _npz_array(archive, "labels", path)
    pixels = array_images(raw[key], path)
    ids, label_dim = array_labels(raw["labels"], len(pixels), path) if "labels" in raw else (None, 0)
    return RealImages(str(path), "npz", len(pixels), (pixels.shape[2], pixels.shape[3]), pixels.shape[1], label_dim,
                      fingerprint_arrays("npz", raw), _ArrayPixels(pixels), ids)


def open_shipped(name: str) -> RealImages:
    """digits-train / digits-test: simcli.data.digits' split, float32 [N, 1, 8, 8] as x / 8 - 1, 10 classes."""
    train, test = load_digits_split()
    part = train if name == "digits-train" else test
    pixels = np.ascontiguousarray(part.images, dtype=np.float32)
    ids = np.asarray(part.labels, dtype=np.int64)
    fingerprint = fingerprint_arrays(name, {"images": pixels, "labels": ids})
    return RealImages(name, "shipped", len(pixels), (pixels.shape[2], pixels.shape[3]), pixels.shape[1],
                      DIGITS_CLASSES, fingerprint, _ArrayPixels(pixels), ids)


def open_real_images(source: str) -> RealImages:
    """The real images SOURCE names (a shipped name, else a folder, .zip or .npz), checked in full (see the module
    docstring); UsageError naming SOURCE and what is wrong."""
    if source in SHIPPED_SETS:
        return open_shipped(source)
    path = Path(source).expanduser()
    if path.is_dir():
        return open_folder(path)
    if not path.exists():
        raise UsageError(f"no data set {source!r}: not a file, a folder or a shipped name", hint=DATA_HINT)
    suffix = path.suffix.lower()
    if path.is_file() and suffix == ".zip":
        return open_zip_set(path)
    if path.is_file() and suffix == ".npz":
        return open_npz(path)
    raise UsageError(f"{source}: neither a folder, a .zip nor an .npz", hint=DATA_HINT)


# ---------------------------------------------------------------------------------------------- teacher


def _size_text(resolution: Sequence[int]) -> str:
    """(H, W) as 'WxH', the way image tools and dataset_tool's --resolution write sizes."""
    return f"{resolution[1]}x{resolution[0]}"


def check_against_teacher(data: RealImages, sample_shape: tuple[int, ...], label_dim: int, teacher_name: str) -> None:
    """UsageError unless `data` can stand for the samples of teacher `teacher_name` (sample_shape (C, H, W),
    label_dim classes): same size and channels; labels when the teacher is class-conditional, and no more classes
    than it has. Labels given to an unconditional teacher are fine (they go unused)."""
    if len(sample_shape) != 3:
        raise UsageError(f"teacher {teacher_name} generates {list(sample_shape)} samples, not images: "
                         f"--data {data.source} cannot be used with it", hint="drop --data for this teacher")
    channels, height, width = (int(s) for s in sample_shape)
    if data.resolution != (height, width):
        raise UsageError(f"{data.source}: images are {_size_text(data.resolution)}, but teacher {teacher_name} "
                         f"generates {_size_text((height, width))}",
                         hint=f"resize them, e.g. with EDM's dataset_tool.py --resolution={width}x{height}")
    if data.channels != channels:
        names = {1: "grayscale", 3: "RGB"}
        want = names.get(channels, f"{channels}-channel")
        raise UsageError(f"{data.source}: images have {data.channels} channel(s), but teacher {teacher_name} "
                         f"generates {channels} ({want})", hint=f"convert the images to {want}")
    if label_dim > 0 and data.label_dim == 0:
        how = f"a {LABELS_FILE} with labels (EDM's dataset_tool layout)"
        if data.kind == "npz":
            how = "an int 'labels' array"
        raise UsageError(f"{data.source}: has no class labels, but teacher {teacher_name} is class-conditional "
                         f"({label_dim} classes)", hint=f"add {how}")
    if label_dim > 0 and data.label_dim > label_dim:
        raise UsageError(f"{data.source}: labels go up to class {data.label_dim - 1}, but teacher {teacher_name} has "
                         f"{label_dim} classes (0..{label_dim - 1})", hint="use the teacher's class numbering")


# ---------------------------------------------------------------------------------------------- draws


@dataclass(frozen=True, eq=False)
class RealBatchStream:
    """Draws of real images for training: uniform with replacement (as SiDA and DMD2; no class balancing), every
    index from the generator handed in.

    Hand it a micro-batch's generator (IterationStreams.real_data, or IterationStreams.begin's): a micro-batch
    then draws the same images whichever process computes it and in whatever order, and a resumed run repeats the
    draws exactly. The stream keeps no state of its own, so there is nothing to save in a snapshot.
    """

    data: RealImages

    def draw(self, rng: torch.Generator, n: int) -> np.ndarray:
        """int64 [n] image indices, uniform with replacement, from `rng` (on the generator's device)."""
        return torch.randint(self.data.num_images, (n,), generator=rng, device=rng.device).cpu().numpy()

    def batch(self, rng: torch.Generator, n: int, device: torch.device | str,
              label_dim: int | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(images float32 [n, C, H, W] in [-1, 1], one-hot labels [n, label_dim] or None) drawn from `rng`, on
        `device`; label_dim as in RealImages.labels (pass the teacher's)."""
        indices = self.draw(rng, n)
        labels = self.data.labels(indices, label_dim)
        return self.data.images(indices).to(device), None if labels is None else labels.to(device)

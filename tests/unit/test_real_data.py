"""Real training images (simcli.data.real_data): folders, EDM zips, npz files and the shipped digits give the same
tensors; every bad input is a UsageError naming the file; draws are deterministic per micro-batch."""

from __future__ import annotations

import io
import json
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import simcli.data.real_data as real_data
from simcli.data.digits import load_digits_split
from simcli.data.real_data import (
    RealBatchStream,
    check_against_teacher,
    open_real_images,
)
from simcli.distill.streams import IterationStreams
from simcli.errors import UsageError

NAMES = [f"{i // 3:05d}/img{i:08d}.png" for i in range(6)]  # EDM dataset_tool's layout
LABELS = [3, 0, 7, 3, 1, 0]


def pixels(channels: int, count: int = 6, size: int = 8, seed: int = 0) -> np.ndarray:
    """uint8 [N, H, W, C] of random images."""
    return np.random.default_rng(seed).integers(0, 256, (count, size, size, channels), dtype=np.uint8)


def png_bytes(image: np.ndarray, mode: str | None = None) -> bytes:
    """PNG of one uint8 [H, W, C] image (C = 1 saved as L)."""
    buffer = io.BytesIO()
    array = image[..., 0] if image.shape[-1] == 1 else image
    Image.fromarray(array, mode=mode).save(buffer, format="PNG")
    return buffer.getvalue()


def labels_json(names: list[str], labels: list[int] | None) -> str:
    return json.dumps({"labels": None if labels is None else [[n, c] for n, c in zip(names, labels, strict=True)]})


def write_folder(root: Path, images: np.ndarray, labels: list[int] | None = LABELS) -> Path:
    for name, image in zip(NAMES, images, strict=True):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(png_bytes(image))
    if labels is not None:
        (root / "dataset.json").write_text(labels_json(NAMES, labels))
    return root


def write_zip(path: Path, images: np.ndarray, labels: list[int] | None = LABELS) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, image in reversed(list(zip(NAMES, images, strict=True))):  # stored out of order on purpose
            archive.writestr(name, png_bytes(image))
        if labels is not None:
            archive.writestr("dataset.json", labels_json(NAMES, labels))
    return path


def edm_scale(images_nhwc: np.ndarray) -> torch.Tensor:
    """x / 127.5 - 1 in float32, [N, C, H, W], computed apart from the module under test."""
    x = images_nhwc.transpose(0, 3, 1, 2).astype(np.float32)
    return torch.from_numpy(x / np.float32(127.5) - np.float32(1))


# ---------------------------------------------------------------------------------------------- same tensors


@pytest.mark.parametrize("channels", [3, 1])
def test_folder_zip_and_npz_of_the_same_images_give_the_same_tensors_and_labels(tmp_path, channels):
    images = pixels(channels)
    folder = write_folder(tmp_path / "folder", images)
    archive = write_zip(tmp_path / "set.zip", images)
    npz = tmp_path / "set.npz"
    np.savez(npz, images=images, labels=np.array(LABELS))
    npz_chw = tmp_path / "chw.npz"
    np.savez(npz_chw, x=images.transpose(0, 3, 1, 2), labels=np.eye(8, dtype=np.float32)[LABELS])

    expected = edm_scale(images)
    onehot = torch.nn.functional.one_hot(torch.tensor(LABELS), 8).float()
    order = np.array([5, 0, 2, 2, 1])
    for source in (folder, archive, npz, npz_chw):
        data = open_real_images(str(source))
        assert (data.num_images, data.resolution, data.channels, data.label_dim) == (6, (8, 8), channels, 8)
        assert data.shape == (channels, 8, 8)
        got = data.images(np.arange(6))
        assert got.dtype == torch.float32 and torch.equal(got, expected), source
        assert torch.equal(data.images(order), expected[order])
        assert torch.equal(data.labels(order), onehot[order])
        assert torch.equal(data.labels(order, label_dim=10)[:, :8], onehot[order])
        assert data.labels(order, label_dim=10).shape == (5, 10)
        assert got.min() >= -1 and got.max() <= 1
    assert open_real_images(str(archive)).fingerprint == open_real_images(str(archive)).fingerprint


def test_unlabelled_sets_and_null_labels_have_label_dim_zero(tmp_path):
    (tmp_path / "a").mkdir()
    write_folder(tmp_path / "a", pixels(3), labels=None)
    archive = tmp_path / "b.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("x.png", png_bytes(pixels(3)[0]))
        z.writestr("dataset.json", json.dumps({"labels": None}))
    for source in (tmp_path / "a", archive):
        data = open_real_images(str(source))
        assert data.label_dim == 0 and data.labels([0]) is None


def test_non_contiguous_classes_give_the_largest_plus_one(tmp_path):
    write_folder(tmp_path, pixels(1), labels=[2, 9, 2, 9, 4, 4])
    data = open_real_images(str(tmp_path))
    assert data.label_dim == 10
    assert data.labels([1]).argmax().item() == 9


def test_palette_images_become_rgb_and_grayscale_among_rgb_is_repeated(tmp_path):
    rgb = pixels(3, count=1)[0]
    gray = pixels(1, count=1, seed=1)[0]
    palette = Image.fromarray(rgb).convert("P")
    buffer = io.BytesIO()
    palette.save(buffer, format="PNG")
    (tmp_path / "a.png").write_bytes(buffer.getvalue())
    (tmp_path / "b.png").write_bytes(png_bytes(gray))
    data = open_real_images(str(tmp_path))
    assert data.channels == 3
    got = data.images([0, 1])
    assert torch.equal(got[0], edm_scale(np.asarray(palette.convert("RGB"))[None])[0])
    assert torch.equal(got[1], edm_scale(np.repeat(gray, 3, axis=-1)[None])[0])


def test_digits_train_is_the_digits_teachers_own_data():
    from simcli.teachers.registry import load_teacher

    data = open_real_images("digits-train")
    train, test = load_digits_split()
    assert (data.num_images, data.label_dim, data.shape) == (len(train.images), 10, (1, 8, 8))
    # examples/digits/train_teacher.py: torch.from_numpy(train.images) and one_hot(train.labels, 10)
    assert torch.equal(data.images(np.arange(data.num_images)), torch.from_numpy(train.images))
    assert torch.equal(data.labels(np.arange(data.num_images)),
                       torch.nn.functional.one_hot(torch.from_numpy(train.labels), 10).float())
    teacher = load_teacher("digits").denoiser
    check_against_teacher(data, tuple(teacher.sample_shape), teacher.label_dim, "digits")  # no error
    held_out = open_real_images("digits-test")
    assert held_out.num_images == len(test.images) and held_out.fingerprint != data.fingerprint
    assert torch.equal(held_out.images([0, 299]), torch.from_numpy(test.images[[0, 299]]))


# ---------------------------------------------------------------------------------------------- errors


def usage_error(source: str | Path) -> UsageError:
    with pytest.raises(UsageError) as info:
        open_real_images(str(source))
    assert info.value.hint
    assert "\n" not in info.value.message
    return info.value


def test_an_image_of_another_size_is_named_with_both_sizes(tmp_path):
    write_folder(tmp_path, pixels(3), labels=None)
    (tmp_path / NAMES[4]).write_bytes(png_bytes(pixels(3, count=1, size=16)[0]))
    error = usage_error(tmp_path)
    assert NAMES[4] in error.message and "16x16" in error.message and "8x8" in error.message


def test_empty_folder_and_zip_and_unknown_sources(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    assert "no images in" in usage_error(tmp_path / "empty").message
    with zipfile.ZipFile(tmp_path / "empty.zip", "w") as z:
        z.writestr("dataset.json", json.dumps({"labels": None}))
    assert f"no images in {tmp_path / 'empty.zip'}" in usage_error(tmp_path / "empty.zip").message
    error = usage_error(tmp_path / "missing")
    assert "missing" in error.message and "digits-train" in error.hint
    (tmp_path / "a.txt").write_text("x")
    assert "a.txt" in usage_error(tmp_path / "a.txt").message


def test_a_truncated_png_is_named(tmp_path):
    write_folder(tmp_path, pixels(3), labels=None)
    broken = tmp_path / NAMES[2]
    broken.write_bytes(broken.read_bytes()[:-30])
    error = usage_error(tmp_path)
    assert str(broken) in error.message


def test_a_decode_failure_at_read_time_is_named(tmp_path, monkeypatch):
    write_folder(tmp_path, pixels(3), labels=None)
    data = open_real_images(str(tmp_path))
    broken = tmp_path / NAMES[3]
    broken.write_bytes(broken.read_bytes()[:60])  # spoilt after the set was opened
    with pytest.raises(UsageError, match=NAMES[3]):
        data.images([0])  # the first draw decodes the whole (small) set
    monkeypatch.setattr(real_data, "DECODE_ALL_BYTES", 64)  # one image: per-image decoding through the LRU
    data = open_real_images(str(tmp_path / "00000"))
    (tmp_path / NAMES[1]).write_bytes(b"\x89PNG\r\n\x1a\n" + b"x" * 40)
    assert data.images([0]).shape == (1, 3, 8, 8)
    with pytest.raises(UsageError, match="img00000001"):
        data.images([1])


def test_the_lru_path_gives_the_same_pixels(tmp_path, monkeypatch):
    images = pixels(3)
    write_folder(tmp_path, images)
    monkeypatch.setattr(real_data, "DECODE_ALL_BYTES", 2 * 8 * 8 * 3)  # two images
    data = open_real_images(str(tmp_path))
    order = np.array([4, 0, 4, 1, 5, 3, 0])
    assert torch.equal(data.images(order), edm_scale(images)[order])


def test_labels_file_naming_a_missing_file_or_missing_an_image(tmp_path):
    write_folder(tmp_path, pixels(3))
    labels = json.loads((tmp_path / "dataset.json").read_text())
    labels["labels"].append(["00009/gone.png", 1])
    (tmp_path / "dataset.json").write_text(json.dumps(labels))
    error = usage_error(tmp_path)
    assert "00009/gone.png" in error.message and "dataset.json" in error.message
    labels["labels"] = labels["labels"][1:-1]
    (tmp_path / "dataset.json").write_text(json.dumps(labels))
    error = usage_error(tmp_path)
    assert NAMES[0] in error.message and "no label" in error.message


@pytest.mark.parametrize("document", ['{"labels": [["00000/img00000000.png", -1]]}',
                                      '{"labels": [["00000/img00000000.png", 1.5]]}',
                                      '{"labels": [["00000/img00000000.png", true]]}',
                                      '{"labels": [["00000/img00000000.png"]]}',
                                      '{"other": []}', '{"labels": ', '[1, 2]'])
def test_malformed_labels_files_are_named(tmp_path, document):
    write_folder(tmp_path, pixels(3), labels=None)
    (tmp_path / "dataset.json").write_text(document)
    assert str(tmp_path / "dataset.json") in usage_error(tmp_path).message


def test_zip_members_with_unsafe_names_are_refused(tmp_path):
    for bad in ("../evil.png", "/abs.png", "a/../../evil.png", "C:/evil.png"):
        path = tmp_path / "bad.zip"
        write_zip(path, pixels(3), labels=None)
        with zipfile.ZipFile(path, "a") as z:
            z.writestr(zipfile.ZipInfo(bad), png_bytes(pixels(3)[0]))
        error = usage_error(path)
        assert str(path) in error.message and repr(bad) in error.message


def test_zip_members_over_the_size_limit_are_refused_before_reading(tmp_path, monkeypatch):
    path = write_zip(tmp_path / "big.zip", pixels(3), labels=None)
    monkeypatch.setattr(real_data, "MAX_FILE_BYTES", 100)
    error = usage_error(path)
    assert "in " + str(path) in error.message and "over the 100 bytes" in error.message


def declare_size(path: Path, member: str, size: int) -> None:
    """Rewrite the uncompressed size that a zip declares for `member` (central directory and local header)."""
    raw = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as z:
        local = z.getinfo(member).header_offset
    name = member.encode()
    central = next(m.start() for m in re.finditer(b"PK\x01\x02", raw) if raw[m.start() + 46:].startswith(name))
    for offset in (central + 24, local + 22):
        raw[offset:offset + 4] = size.to_bytes(4, "little")
    path.write_bytes(bytes(raw))


def test_a_zip_member_declaring_a_huge_size_is_refused_before_it_is_read(tmp_path):
    path = tmp_path / "bomb.zip"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("a.png", png_bytes(pixels(3)[0]))
        z.writestr("b.png", png_bytes(pixels(3)[1]))
    declare_size(path, "b.png", 2**32 - 1)
    error = usage_error(path)
    assert f"b.png in {path}: {2**32 - 1} bytes, over the {64 * 2**20} bytes" in error.message


def test_a_zip_member_that_lies_about_its_size_cannot_be_read_past_it(tmp_path):
    """zipfile stops at the declared size; a member whose data are longer fails its CRC check and is named."""
    path = tmp_path / "lie.zip"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("a.png", png_bytes(pixels(3)[0]))
        z.writestr("b.png", png_bytes(pixels(3)[1]) + b"\0" * 100_000)
    declare_size(path, "b.png", 300)
    error = usage_error(path)
    assert f"b.png in {path}: cannot read it" in error.message


def test_a_zip_without_labels_for_a_conditional_teacher(tmp_path):
    path = write_zip(tmp_path / "set.zip", pixels(3), labels=None)
    data = open_real_images(str(path))
    with pytest.raises(UsageError) as info:
        check_against_teacher(data, (3, 8, 8), 10, "edm-cifar10")
    assert str(path) in info.value.message and "class-conditional" in info.value.message
    assert "dataset.json" in info.value.hint
    check_against_teacher(data, (3, 8, 8), 0, "edm-uncond")  # fine for an unconditional teacher


def test_shape_and_class_mismatches_against_the_teacher(tmp_path):
    path = write_zip(tmp_path / "set.zip", pixels(3))  # 8 classes
    data = open_real_images(str(path))
    with pytest.raises(UsageError) as info:
        check_against_teacher(data, (3, 32, 32), 10, "edm-cifar10")
    assert str(path) in info.value.message and "8x8" in info.value.message and "32x32" in info.value.message
    assert "--resolution=32x32" in info.value.hint
    with pytest.raises(UsageError, match="1 channel"):
        check_against_teacher(open_real_images(str(write_folder(tmp_path, pixels(1)))), (3, 8, 8), 10, "t")
    with pytest.raises(UsageError, match="up to class 7"):
        check_against_teacher(data, (3, 8, 8), 5, "small")
    with pytest.raises(UsageError, match="not images"):
        check_against_teacher(data, (2,), 0, "gmm")
    check_against_teacher(data, (3, 8, 8), 10, "edm-cifar10")


def test_rgba_images_are_refused_with_a_hint(tmp_path):
    write_folder(tmp_path, pixels(3), labels=None)
    rgba = np.concatenate([pixels(3)[0], np.full((8, 8, 1), 255, np.uint8)], axis=-1)
    (tmp_path / NAMES[5]).write_bytes(png_bytes(rgba))
    error = usage_error(tmp_path)
    assert NAMES[5] in error.message and "alpha" in error.message and "RGB" in error.hint


def test_npz_files_with_objects_or_bad_arrays(tmp_path):
    objects = tmp_path / "objects.npz"
    np.savez(objects, images=np.array([np.zeros((8, 8)), "text"], dtype=object))
    error = usage_error(objects)
    assert str(objects) in error.message and "Python objects" in error.message
    cases = {
        "int16.npz": {"images": np.zeros((2, 8, 8, 3), np.int16)},
        "range.npz": {"images": np.full((2, 3, 8, 8), 1.5, np.float32)},
        "rgba.npz": {"images": np.zeros((2, 8, 8, 4), np.uint8)},
        "empty.npz": {"images": np.zeros((0, 8, 8, 3), np.uint8)},
        "nokey.npz": {"pictures": np.zeros((2, 8, 8, 3), np.uint8)},
        "count.npz": {"images": np.zeros((2, 8, 8, 3), np.uint8), "labels": np.array([1, 2, 3])},
        "negative.npz": {"images": np.zeros((2, 8, 8, 3), np.uint8), "labels": np.array([1, -2])},
        "soft.npz": {"images": np.zeros((2, 8, 8, 3), np.uint8), "labels": np.full((2, 4), 0.25)},
    }
    for name, arrays in cases.items():
        np.savez(tmp_path / name, **arrays)
        assert str(tmp_path / name) in usage_error(tmp_path / name).message, name
    (tmp_path / "junk.npz").write_bytes(b"not a zip at all")
    assert "not an .npz archive" in usage_error(tmp_path / "junk.npz").message
    np.save(tmp_path / "bare.npy", np.zeros((2, 8, 8, 3), np.uint8))
    (tmp_path / "bare.npy").rename(tmp_path / "bare.npz")
    assert "bare .npy" in usage_error(tmp_path / "bare.npz").message


def test_float_npz_images_are_kept_as_they_are(tmp_path):
    images = np.linspace(-1, 1, 2 * 3 * 4 * 4, dtype=np.float32).reshape(2, 4, 4, 3)
    np.savez(tmp_path / "f.npz", images=images)
    data = open_real_images(str(tmp_path / "f.npz"))
    assert torch.equal(data.images([1, 0]), torch.from_numpy(images.transpose(0, 3, 1, 2)[[1, 0]].copy()))


# ---------------------------------------------------------------------------------------------- draws


def test_draws_are_deterministic_per_stream_and_differ_between_streams(tmp_path):
    data = open_real_images(str(write_zip(tmp_path / "set.zip", pixels(3))))
    stream = RealBatchStream(data)
    streams = IterationStreams(seed=7, step=12, device=torch.device("cpu"))
    first = stream.draw(streams.real_data(0, 3), 64)
    assert first.dtype == np.int64 and first.shape == (64,) and first.min() >= 0 and first.max() < 6
    assert np.array_equal(first, stream.draw(streams.real_data(0, 3), 64))
    assert not np.array_equal(first, stream.draw(streams.real_data(0, 4), 64))
    assert not np.array_equal(first, stream.draw(streams.real_data(1, 3), 64))
    assert not np.array_equal(first, stream.draw(IterationStreams(7, 13, "cpu").real_data(0, 3), 64))
    # IterationStreams.begin's generator works as well
    assert np.array_equal(stream.draw(streams.begin(0, 3), 64), stream.draw(streams.begin(0, 3), 64))
    images, labels = stream.batch(streams.real_data(0, 3), 64, "cpu", label_dim=10)
    assert torch.equal(images, data.images(first)) and torch.equal(labels, data.labels(first, 10))
    assert images.device.type == "cpu" and labels.shape == (64, 10)


def test_draws_do_not_depend_on_how_micro_batches_are_shared(tmp_path):
    data = open_real_images(str(write_folder(tmp_path, pixels(3))))
    stream = RealBatchStream(data)
    micro_batches, n = 4, 5

    def draws(step: int, indices: list[int]) -> dict[int, torch.Tensor]:
        streams = IterationStreams(seed=3, step=step, device=torch.device("cpu"))
        return {i: stream.batch(streams.real_data(0, i), n, "cpu")[0] for i in indices}

    for step in (0, 1, 250):
        one_process = draws(step, list(range(micro_batches)))
        rank0, rank1 = draws(step, [0, 1]), draws(step, [3, 2])  # two processes, one in reverse order
        resumed = draws(step, [2])  # a resumed run computing one micro-batch on its own
        for i in range(micro_batches):
            assert torch.equal(one_process[i], {**rank0, **rank1}[i])
        assert torch.equal(resumed[2], one_process[2])
        assert not torch.equal(one_process[0], one_process[1])

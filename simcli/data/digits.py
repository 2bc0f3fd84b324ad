"""scikit-learn's 8x8 handwritten digits as an image data set in EDM's [-1, 1] range, with a fixed split.

`load_digits_split()` returns (train, test): 1,497 training and 300 held-out digits. The split is made
here with numpy alone, so it does not depend on the scikit-learn version (only on `load_digits` returning
the same 1,797 images in the same order, which it has for many years).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from simcli.errors import UsageError

NUM_TEST = 300
SPLIT_SEED = 0
PIXEL_MAX = 16  # load_digits pixel values are integers 0..16


class DigitsSplit(NamedTuple):
    """One part of the split: images float32 [N, 1, 8, 8] in [-1, 1], labels int64 [N], and their indices
    into `load_digits()` (int64 [N], ascending)."""

    images: np.ndarray
    labels: np.ndarray
    indices: np.ndarray


def stratified_test_indices(labels: np.ndarray, num_test: int = NUM_TEST, seed: int = SPLIT_SEED) -> np.ndarray:
    """Indices of the held-out set, ascending: a proportional share of every class.

    Rule: class c with n_c members gets q_c = n_c * num_test / N held-out images, rounded by the largest
    remainder method (floor(q_c) each, then one more to the classes with the largest fractional parts of q_c,
    ties to the smaller class, until the shares add up to exactly num_test). One generator,
    np.random.default_rng(seed), then permutes each class's indices in turn, classes in ascending order,
    and the first share of each permutation is held out.
    """
    labels = np.asarray(labels)
    classes = np.unique(labels)  # ascending
    counts = np.array([(labels == c).sum() for c in classes], dtype=np.int64)
    quota = counts * num_test / len(labels)
    share = np.floor(quota).astype(np.int64)
    short = num_test - int(share.sum())
    order = sorted(range(len(classes)), key=lambda i: (-(quota[i] - share[i]), i))
    for i in order[:short]:
        share[i] += 1
    rng = np.random.default_rng(seed)
    held = [rng.permutation(np.flatnonzero(labels == c))[:k] for c, k in zip(classes, share, strict=True)]
    return np.sort(np.concatenate(held)).astype(np.int64)


def scale_digits(pixels: np.ndarray) -> np.ndarray:
    """load_digits pixels (0..16, [N, 64]) -> float32 [N, 1, 8, 8] in [-1, 1] as x / 8 - 1."""
    x = np.asarray(pixels, dtype=np.float32).reshape(-1, 1, 8, 8)
    return x / (PIXEL_MAX / 2) - 1


def load_digits_split(num_test: int = NUM_TEST, seed: int = SPLIT_SEED) -> tuple[DigitsSplit, DigitsSplit]:
    """(train, test) parts of scikit-learn's digits: 1,497 / 300 images by default (see stratified_test_indices).

    Images are float32 [N, 1, 8, 8] scaled x / 8 - 1 into [-1, 1]; labels are int64 [N]. scikit-learn ships
    the data inside the package, so nothing is downloaded.
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:
        raise UsageError("the digits data set needs scikit-learn", hint="pip install 'simcli[digits]' (in a checkout: pip install -e '.[digits]')") from exc
    bunch = load_digits()
    pixels = np.asarray(bunch.data)  # [1797, 64] float, 0..16
    labels = np.asarray(bunch.target).astype(np.int64)  # [1797]
    test_idx = stratified_test_indices(labels, num_test, seed)
    is_test = np.zeros(len(labels), dtype=bool)
    is_test[test_idx] = True
    train_idx = np.flatnonzero(~is_test).astype(np.int64)
    images = scale_digits(pixels)
    train = DigitsSplit(images[train_idx], labels[train_idx], train_idx)
    test = DigitsSplit(images[test_idx], labels[test_idx], test_idx)
    return train, test

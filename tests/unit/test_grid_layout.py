"""Sample grids' layout: one row per class while classes fit, else n samples spread over the classes."""

from __future__ import annotations

import torch

from simcli.sampling.grids import grid_layout


def test_unconditional_grids_are_square():
    assert grid_layout(10, 0) == (4, None)


def test_few_classes_get_one_row_each():
    columns, labels = grid_layout(25, 10)
    assert columns == 2 and labels.shape == (20, 10)
    assert labels.argmax(1).tolist() == [c for c in range(10) for _ in range(2)]


def test_more_classes_than_samples_spread_the_samples_over_the_labels():
    columns, labels = grid_layout(4, 1000)
    assert columns == 2 and labels.shape == (4, 1000) and labels.dtype == torch.float32
    assert labels.argmax(1).tolist() == [0, 250, 500, 750]
    assert torch.equal(labels.sum(1), torch.ones(4))

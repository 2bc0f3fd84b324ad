"""CUDA checks (marker `gpu`): skipped on machines without CUDA, so they are collected everywhere.

- a tiny EDM network gives the same output on CUDA as on CPU (TF32 off, 1e-4 relative);
- a 2-iteration `simcli distill --device cuda --preset tiny` run finishes and writes a generator.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
from typer.testing import CliRunner

from simcli.cli.app import app
from simcli.rundir.snapshots import load_generator_file
from simcli.teachers.registry import load_teacher
from tests.helpers.tiny_edm import write_tiny_edm

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (torch.cuda.is_available() is False)"),
]


@pytest.fixture
def no_tf32():
    """Full float32 matmuls and convolutions on CUDA, so CPU and CUDA agree to float32 rounding."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def test_tiny_edm_forward_matches_cpu(tmp_path, no_tf32):
    net_cpu = load_teacher(str(write_tiny_edm(tmp_path / "tiny.pkl", label_dim=10))).denoiser
    net_cuda = copy.deepcopy(net_cpu).to("cuda")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, 8, 8, generator=g) * 2
    sigma = torch.tensor([0.002, 0.3, 2.5, 80.0])
    labels = torch.nn.functional.one_hot(torch.tensor([0, 3, 7, 9]), 10).float()
    with torch.no_grad():
        want = net_cpu(x, sigma, labels)
        got = net_cuda(x.cuda(), sigma.cuda(), labels.cuda()).cpu()
    assert got.shape == want.shape == (4, 3, 8, 8) and torch.isfinite(got).all()
    rel = ((got - want).norm() / want.norm()).item()
    assert rel < 1e-4, rel
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * want.abs().max().item())


def test_tiny_distillation_on_cuda_writes_a_generator(tmp_path):
    run = tmp_path / "run"
    args = ["distill", "--teacher", "gmm-ring8", "--preset", "tiny", "--steps", "2", "--device", "cuda",
            "--out", str(run), "--json"]
    result = CliRunner(env={"NO_COLOR": "1"}).invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["steps"] == 2 and summary["images_seen"] == 64 and summary["nonfinite_total"] == 0
    assert json.loads((run / "config.json").read_text())["device"] == "cuda"
    tensors, meta = load_generator_file(summary["generator"])
    assert tensors and all(t.device.type == "cpu" and torch.isfinite(t).all() for t in tensors.values())
    assert meta["step"] == 2 and meta["images_seen"] == 64

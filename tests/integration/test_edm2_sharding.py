"""EDM2 teachers under training.sharding fsdp (FSDP2 over 2 gloo processes on the CPU), guided by a second network:
the losses of the unsharded run up to rounding (see tests/integration/test_sharding.py for why not bit for bit), and a
generator snapshot that samples and decodes like any other."""

from __future__ import annotations

import pytest
import torch

from simcli.sampling.generator import load_generator
from tests.helpers.edm2_pickle_writer import tiny_edm2, write_edm2_snapshot, write_tiny_vae
from tests.helpers.processes import records, run_processes
from tests.helpers.tiny_edm import tiny_edm_spec

STEPS = 4


@pytest.mark.slow
def test_a_guided_edm2_teacher_sharded_over_two_processes_matches_one(tmp_path):
    vae = write_tiny_vae(tmp_path / "vae")
    teacher = write_edm2_snapshot(tmp_path / "teacher.pkl", *tiny_edm2(seed=0), vae_name=str(vae))
    guide = write_edm2_snapshot(tmp_path / "guide.pkl", *tiny_edm2(seed=1, label_dim=0), vae_name=str(vae))
    guided = (f"guide.network={guide}", "guide.weight=2.0")
    one, two = tmp_path / "one", tmp_path / "two"
    run_processes(1, tiny_edm_spec(teacher, STEPS, *guided, snapshot_every_kimg=0.016), one)
    run_processes(2, tiny_edm_spec(teacher, STEPS, *guided, "training.sharding=fsdp", snapshot_every_kimg=0.016), two)
    ra, rb = records(one, "status"), records(two, "status")
    assert [r["step"] for r in ra] == [r["step"] for r in rb] == list(range(1, STEPS + 1))
    for key in ("loss_online", "loss_generator"):
        scale = max(abs(r[key]) for r in ra)
        for x, y in zip(ra, rb, strict=True):
            assert abs(x[key] - y[key]) <= 1e-5 * scale, (x["step"], key, x[key], y[key])
    a, meta, _ = load_generator(one)
    b, _, _ = load_generator(two)
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-6, msg=name)
    assert meta["architecture"]["latents"]["vae"] == str(vae)

"""Process-wide runtime settings (simcli.runtime): OpenMP's wait policy, the cores this process may use, and when a
machine looks oversubscribed."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from simcli.runtime import BUSY_LOAD_PER_CORE, oversubscribed, prefer_passive_openmp, usable_cores


@pytest.mark.parametrize(("load", "cores", "busy"), [
    (2.0, 2, False),  # our own two threads on two cores
    (3.0, 2, False),  # one more runnable thread: at the threshold, not above it
    (3.01, 2, True),
    (6.1, 2, True),
    (90.0, 64, False),
    (97.0, 64, True),
])
def test_oversubscribed_is_the_load_above_its_share_per_core(load, cores, busy):
    assert oversubscribed(load, cores) is busy
    assert oversubscribed(load, cores, per_core=load / cores + 1) is False
    assert BUSY_LOAD_PER_CORE == 1.5


def test_passive_openmp_is_the_default_but_the_users_choice_is_kept():
    env: dict[str, str] = {}
    prefer_passive_openmp(env)
    assert env == {"OMP_WAIT_POLICY": "PASSIVE"}
    env = {"OMP_WAIT_POLICY": "ACTIVE"}
    prefer_passive_openmp(env)
    assert env == {"OMP_WAIT_POLICY": "ACTIVE"}


def test_the_cli_sets_the_wait_policy_before_torch_is_imported():
    """OpenMP reads OMP_WAIT_POLICY once, when torch loads it: the CLI must set it before any command imports torch."""
    code = ("import os, sys; import simcli.cli.app as app; assert 'torch' not in sys.modules; "
            "sys.argv = ['simcli', '--version']\n"
            "try:\n    app.main()\nexcept SystemExit:\n    print(os.environ.get('OMP_WAIT_POLICY'))")
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.stdout.strip().splitlines()[-1] == "PASSIVE", out.stderr


def test_usable_cores_follow_the_affinity_mask():
    assert usable_cores() == len(os.sched_getaffinity(0)) >= 1

"""The noise table of the SIM authors' released one-step generator (SIM-DiT-600M), as their inference computes it.

Source: maple-research-lab/SIM at 6535530, models/__init__.py:38-40 (the table u), :111-113 (beta_t), :93-99 (the
timestep c_noise = M - 1 - index of the nearest entry); inference.py:76-82 (M = 1000, beta 1e-4..0.02, C_1 = 0.001).

EDM's iDDPM preconditioning with the ratio of consecutive alpha-bars replaced by 1 - beta_j, the betas stepped as
beta_j = beta_end + (beta_start - beta_end) j / M for j = M .. 1 (so beta_M = beta_start and the largest, beta_1, is
just below beta_end), and u_M = 0:

    u_{j-1} = sqrt((u_j^2 + 1) / max(1 - beta_j, C_1) - 1)

The network takes timestep M - 1 - j at entry u_j. diffusers' linear schedule (betas np.linspace(beta_start, beta_end,
M), simcli.nets.train_schedule.vp_sigma_bins) reaches beta_end itself: its top sigma is 157.4073, this table's
156.6155 (float64; 156.6157 in float32, the dtype the authors' code builds it in). Both put sigma 2.5 at timestep 440.
"""

from __future__ import annotations

import torch

SIM_RELEASE_STEPS = 1000  # M
SIM_RELEASE_BETA_START = 0.0001
SIM_RELEASE_BETA_END = 0.02
SIM_RELEASE_C1 = 0.001  # the floor of 1 - beta_j (C_1; never reached for these betas)


def sim_release_sigmas(num_steps: int = SIM_RELEASE_STEPS, beta_start: float = SIM_RELEASE_BETA_START,
                       beta_end: float = SIM_RELEASE_BETA_END, c_1: float = SIM_RELEASE_C1,
                       dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The table u_0 > u_1 > ... > u_{M-1} > u_M = 0 (M + 1 entries, falling) in `dtype` (the authors': float32),
    every operation in that dtype as their code does it (module docstring)."""
    steps = torch.arange(num_steps, 0, -1, dtype=dtype)  # j = M, ..., 1
    keep = (1 - (beta_end + (beta_start - beta_end) * steps / num_steps)).clamp(min=c_1)
    table = torch.zeros(num_steps + 1, dtype=dtype)
    for j, ratio in zip(steps.tolist(), keep, strict=True):
        below = table[int(j)]
        table[int(j) - 1] = ((below * below + 1) / ratio - 1).sqrt()
    return table


def sim_release_bins(**kwargs) -> torch.Tensor:
    """The table indexed by the network's timestep t = 0 .. M-1 (rising, float64 holding the table's values):
    bins[t] = u_{M-1-t}. The entry u_M = 0 (timestep -1) is left out: it is nearest only below sigma u_{M-1} / 2."""
    table = sim_release_sigmas(**kwargs)
    return table[:-1].flip(0).to(torch.float64)

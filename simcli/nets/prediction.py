"""From a diffusers network's raw output to an EDM-form denoiser D(x; sigma), one rule per prediction type.

simcli's noisy samples are x = x0 + sigma eps (EDM's VE form). The families' networks see other forms of the same
sample, c_in x, and predict other targets F; D is affine in F (EDM, Karras et al. 2022, eq. 7):

    D(x; sigma) = c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x; time(sigma))

    prediction    the network sees                        F         c_in            c_skip         c_out
    epsilon (VP)  x_t = sqrt(abar) x0 + sqrt(1-abar) eps  eps       1/sqrt(s^2+1)   1              -s
    v (VP)        the same x_t                            v         1/sqrt(s^2+1)   1/(s^2+1)      -s/sqrt(s^2+1)
    flow          x_t = (1-t) x0 + t eps, t = s/(1+s)     eps - x0  1/(1+s)         1/(1+s)        -s/(1+s)

with s = sigma and, for VP networks, abar = 1/(sigma^2 + 1). The v row is v = sqrt(abar) eps - sqrt(1-abar) x0
(x0 = sqrt(abar) x_t - sqrt(1-abar) v, diffusers' schedulers); the flow row is x0 = x_t - t u (diffusers'
FlowMatchEulerDiscreteScheduler). Because the coefficients do not depend on the condition, classifier-free guidance
on F equals guidance on D. A scheduler's shift rescales sigma by a constant (static shift s: t' = s t / (1 + (s-1) t)
is sigma' = s sigma), which changes schedules and noise-level densities, never this conversion.

Rectified flow reaches pure noise at t = 1 (sigma = infinity): there D(x; sigma) tends to z - u(z; 1) for
x = sigma z, which a large finite sigma_init approaches at first order in 1 - t = 1/(1 + sigma_init); the network
then runs at time 1000 t = 1000 - 1000/(1 + sigma_init) instead of 1000 (tests/unit/test_family_wrappers.py).
"""

from __future__ import annotations

from typing import Literal

import torch

Prediction = Literal["epsilon", "v_prediction", "flow"]
PREDICTIONS: tuple[Prediction, ...] = ("epsilon", "v_prediction", "flow")


def preconditioning(prediction: Prediction, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(c_in, c_skip, c_out) at sigma for a network predicting `prediction` (the table above; EDM eq. 7)."""
    if prediction == "epsilon":
        return 1 / (sigma**2 + 1).sqrt(), torch.ones_like(sigma), -sigma
    if prediction == "v_prediction":
        return 1 / (sigma**2 + 1).sqrt(), 1 / (sigma**2 + 1), -sigma / (sigma**2 + 1).sqrt()
    if prediction == "flow":
        return 1 / (1 + sigma), 1 / (1 + sigma), -sigma / (1 + sigma)
    raise ValueError(f"unknown prediction type {prediction!r}; simcli knows {', '.join(PREDICTIONS)}")


def flow_time(sigma: torch.Tensor | float) -> torch.Tensor:
    """The rectified-flow time of a VE noise level: t = sigma / (1 + sigma) (x_t = (1-t) x0 + t eps = x / (1+sigma))."""
    sigma = torch.as_tensor(sigma)
    return sigma / (1 + sigma)

"""Distance functions d(y) and their gradients d'(y) for SIM (Luo et al. 2024, Table 4).

y is a batch of per-sample differences [B, ...]; norms run over all entries of one sample. Every d is
>= 0 with d(y) = 0 iff y = 0. The d'(y) are closed forms, not autograd, so they can be tested against
autograd of d.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import get_args

import torch

from simcli.config.spec import DistanceName

Tensor = torch.Tensor


def _flat(y: Tensor) -> Tensor:
    return y.reshape(y.shape[0], -1)


def l2(y: Tensor) -> Tensor:
    """d(y) = ||y||^2 (Table 4, l2; SIM-l2 is SiD with alpha = 1 up to weighting)."""
    return _flat(y).pow(2).sum(1)


def l2_grad(y: Tensor) -> Tensor:
    """d'(y) = 2 y (Table 4, l2)."""
    return 2 * y


def l1(y: Tensor) -> Tensor:
    """d(y) = ||y||_1 (Table 4, l1)."""
    return _flat(y).abs().sum(1)


def l1_grad(y: Tensor) -> Tensor:
    """d'(y) = sign(y) (Table 4, l1); discontinuous at 0, see docs on its bias in the SIM surrogate."""
    return torch.sign(y)


def lp(y: Tensor, *, alpha: int) -> Tensor:
    """d(y) = ||y||_alpha^alpha for even alpha >= 2 (Table 4, lp)."""
    return _flat(y).pow(alpha).sum(1)


def lp_grad(y: Tensor, *, alpha: int) -> Tensor:
    """d'(y) = alpha y^(alpha - 1), elementwise (Table 4, lp)."""
    return alpha * y.pow(alpha - 1)


def exp_lp(y: Tensor, *, alpha: int, beta: float) -> Tensor:
    """d(y) = exp(beta ||y||_alpha^alpha) - 1 (Table 4, exp-lp)."""
    return torch.expm1(beta * _flat(y).pow(alpha).sum(1))


def exp_lp_grad(y: Tensor, *, alpha: int, beta: float) -> Tensor:
    """d'(y) = alpha beta exp(beta ||y||_alpha^alpha) y^(alpha-1) (Table 4, exp-lp, with the beta the table drops)."""
    scale = alpha * beta * torch.exp(beta * _flat(y).pow(alpha).sum(1))  # [B]
    return scale.reshape(-1, *([1] * (y.ndim - 1))) * y.pow(alpha - 1)


def huber(y: Tensor, *, delta: float) -> Tensor:
    """d(y) = sum_i h(y_i), h = y^2/2 if |y| <= delta else delta (|y| - delta/2) (standard Huber, Table 4)."""
    a = _flat(y).abs()
    return torch.where(a <= delta, 0.5 * a**2, delta * (a - 0.5 * delta)).sum(1)


def huber_grad(y: Tensor, *, delta: float) -> Tensor:
    """d'(y) = clamp(y, -delta, delta) (Table 4, Huber)."""
    return y.clamp(-delta, delta)


def pseudo_huber(y: Tensor, *, c: float) -> Tensor:
    """d(y) = sqrt(||y||^2 + c^2) - c (Table 4, pseudo-Huber; the paper's default distance)."""
    return torch.sqrt(_flat(y).pow(2).sum(1) + c**2) - c


def pseudo_huber_grad(y: Tensor, *, c: float) -> Tensor:
    """d'(y) = y / sqrt(||y||^2 + c^2) (Table 4 without its harmless factor 2); the normaliser stays live."""
    norm = torch.sqrt(_flat(y).pow(2).sum(1) + c**2)  # [B]
    return y / norm.reshape(-1, *([1] * (y.ndim - 1)))


def default_pseudo_huber_c(dim: int, c_per_sqrt_dim: float = 0.00054) -> float:
    """simcli's documented default c = 0.00054 sqrt(D) in x0 units (the iCT convention; sim-method.md section 4)."""
    return c_per_sqrt_dim * dim**0.5


@dataclass(frozen=True)
class Distance:
    """A distance bound to its constants: d(y) and its closed-form gradient d'(y)."""

    name: str
    d: Callable[[Tensor], Tensor]
    d_prime: Callable[[Tensor], Tensor]


DISTANCE_NAMES: tuple[str, ...] = get_args(DistanceName)


def _need(name: str, **constants: float | None) -> None:
    missing = [k for k, v in constants.items() if v is None]
    if missing:
        raise ValueError(f"distance {name!r} needs {', '.join(missing)}")


def make_distance(
    name: str,
    *,
    pseudo_huber_c: float | None = None,
    huber_delta: float | None = None,
    lp_alpha: int | None = None,
    exp_lp_alpha: int | None = None,
    exp_lp_beta: float | None = None,
) -> Distance:
    """Bind a named distance to its constants (those of the other distances may be left out)."""
    if name == "pseudo-huber":
        _need(name, pseudo_huber_c=pseudo_huber_c)
        return Distance(name, partial(pseudo_huber, c=pseudo_huber_c), partial(pseudo_huber_grad, c=pseudo_huber_c))
    if name == "l2":
        return Distance(name, l2, l2_grad)
    if name == "l1":
        return Distance(name, l1, l1_grad)
    if name == "huber":
        _need(name, huber_delta=huber_delta)
        return Distance(name, partial(huber, delta=huber_delta), partial(huber_grad, delta=huber_delta))
    if name == "lp":
        _need(name, lp_alpha=lp_alpha)
        return Distance(name, partial(lp, alpha=lp_alpha), partial(lp_grad, alpha=lp_alpha))
    if name == "exp-lp":
        _need(name, exp_lp_alpha=exp_lp_alpha, exp_lp_beta=exp_lp_beta)
        return Distance(
            name,
            partial(exp_lp, alpha=exp_lp_alpha, beta=exp_lp_beta),
            partial(exp_lp_grad, alpha=exp_lp_alpha, beta=exp_lp_beta),
        )
    raise ValueError(f"unknown distance {name!r}; known: {', '.join(DISTANCE_NAMES)}")

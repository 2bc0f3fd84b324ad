"""The noise schedules diffusers networks were trained on, read from a pipeline's scheduler config.

VP (DDPM) networks were trained on M discrete noise levels (SIM paper, eq. B.14):

    abar_t  = prod_{s <= t} (1 - beta_s),  betas from beta_start to beta_end in M bins ('linear' or 'scaled_linear')
    sigma_t = sqrt((1 - abar_t) / abar_t)  (ascending), and the network takes the bin index t as its timestep

Rectified-flow networks were trained on continuous times t in (0, 1]; their scheduler's shift moves the training
table t_i = shift(i / M) toward noise, so the smallest noise level the network saw is sigma = shift / (M - 1)
(simcli.nets.prediction: a static shift multiplies sigma).

A schedule record is plain JSON: {"kind": "vp", "num_train_timesteps", "beta_start", "beta_end", "beta_schedule",
"prediction": "epsilon" | "v_prediction"} or {"kind": "flow", "num_train_timesteps", "shift"}.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

from simcli.errors import UsageError

BETA_SCHEDULES = ("linear", "scaled_linear")
VP_PREDICTIONS = ("epsilon", "v_prediction")
DEFAULT_VP_SCHEDULE: dict[str, Any] = {  # PixArt-alpha's (and diffusers' DDPM/DPM-Solver defaults)
    "num_train_timesteps": 1000,
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "beta_schedule": "linear",
}
FLOW_SCHEDULERS = ("FlowMatchEulerDiscreteScheduler", "FlowMatchHeunDiscreteScheduler")


def vp_betas(num_train_timesteps: int = 1000, beta_start: float = 0.0001, beta_end: float = 0.02,
             beta_schedule: str = "linear") -> torch.Tensor:
    """The M betas of a DDPM training schedule, float64 on the CPU ('linear' or 'scaled_linear', as diffusers)."""
    if beta_schedule == "linear":
        return torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float64, device="cpu")
    if beta_schedule == "scaled_linear":
        return torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=torch.float64, device="cpu") ** 2
    raise UsageError(f"unsupported beta_schedule {beta_schedule!r}", hint=f"simcli supports {', '.join(BETA_SCHEDULES)}")


def vp_sigma_bins(num_train_timesteps: int = 1000, beta_start: float = 0.0001, beta_end: float = 0.02,
                  beta_schedule: str = "linear") -> torch.Tensor:
    """sigma_t = sqrt((1 - abar_t) / abar_t) for t = 0 .. M-1 (ascending), float64 on the CPU (SIM eq. B.14)."""
    alpha_bar = torch.cumprod(1 - vp_betas(num_train_timesteps, beta_start, beta_end, beta_schedule), dim=0)
    return ((1 - alpha_bar) / alpha_bar).sqrt()


def table_dtype(device: torch.device) -> torch.dtype:
    """float64 for sigma tables, except on MPS, which has none."""
    return torch.float32 if device.type == "mps" else torch.float64


def sigma_to_timestep(sigma: torch.Tensor | float, bins: torch.Tensor) -> torch.Tensor:
    """Index of the bin nearest to each sigma (absolute distance, ties to the lower index), int64, sigma's shape."""
    sigma = torch.as_tensor(sigma)
    dtype = table_dtype(sigma.device)
    table = bins.to(device=sigma.device, dtype=dtype)
    return (sigma.to(dtype).reshape(-1, 1) - table.reshape(1, -1)).abs().argmin(dim=1).reshape(sigma.shape)


def _number(config: Mapping[str, Any], key: str, default: Any, kind: type) -> Any:
    value = config.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise UsageError(f"the scheduler config's {key} must be a finite number, got {value!r}")
    return kind(value)


def vp_schedule(config: Mapping[str, Any] | None) -> dict[str, Any]:
    """The VP training schedule a diffusers scheduler config records (diffusers' defaults where a key is absent)."""
    config = dict(config or {})
    if config.get("trained_betas") is not None:
        raise UsageError("the scheduler config has trained_betas; simcli supports only linear beta schedules")
    schedule = {
        "kind": "vp",
        "num_train_timesteps": _number(config, "num_train_timesteps", 1000, int),
        "beta_start": _number(config, "beta_start", DEFAULT_VP_SCHEDULE["beta_start"], float),
        "beta_end": _number(config, "beta_end", DEFAULT_VP_SCHEDULE["beta_end"], float),
        "beta_schedule": config.get("beta_schedule", "linear"),
        "prediction": config.get("prediction_type", "epsilon"),
    }
    if schedule["beta_schedule"] not in BETA_SCHEDULES:
        raise UsageError(f"the scheduler config's beta_schedule {schedule['beta_schedule']!r} is not supported",
                         hint=f"simcli supports {', '.join(BETA_SCHEDULES)}")
    if schedule["prediction"] not in VP_PREDICTIONS:
        raise UsageError(f"the scheduler config's prediction_type {schedule['prediction']!r} is not supported",
                         hint=f"simcli's DDPM teachers predict {' or '.join(VP_PREDICTIONS)}")
    if not 0 < schedule["beta_start"] <= schedule["beta_end"] < 1 or schedule["num_train_timesteps"] < 2:
        raise UsageError(f"the scheduler config's schedule {schedule} is not a DDPM schedule")
    return schedule


def flow_schedule(config: Mapping[str, Any] | None) -> dict[str, Any]:
    """The rectified-flow training schedule of a scheduler config: its table size and static shift (SANA's
    DPM-Solver records it as flow_shift). A dynamic (resolution-dependent) shift is recorded as shift 1: it moves
    the sampling schedule, not the network's training table."""
    config = dict(config or {})
    dynamic = bool(config.get("use_dynamic_shifting", False))
    shift = 1.0 if dynamic else _number(config, "flow_shift" if "flow_shift" in config else "shift", 1.0, float)
    schedule = {"kind": "flow", "num_train_timesteps": _number(config, "num_train_timesteps", 1000, int), "shift": shift}
    if shift <= 0 or schedule["num_train_timesteps"] < 2:
        raise UsageError(f"the scheduler config's flow schedule {schedule} is not usable (shift must be positive)")
    return schedule


def is_flow_scheduler(config: Mapping[str, Any] | None) -> bool:
    """Whether a scheduler config is a rectified-flow one (flow-matching schedulers, or DPM-Solver with flow sigmas)."""
    config = dict(config or {})
    return (config.get("_class_name") in FLOW_SCHEDULERS or config.get("prediction_type") == "flow_prediction"
            or bool(config.get("use_flow_sigmas", False)))


def training_schedule(config: Mapping[str, Any] | None) -> dict[str, Any]:
    """The schedule record (module docstring) of a pipeline's scheduler config, VP or flow."""
    return flow_schedule(config) if is_flow_scheduler(config) else vp_schedule(config)


def check_schedule_record(record: Any) -> dict[str, Any]:
    """A recorded schedule, checked (records written before the 'kind' key are VP epsilon schedules)."""
    if not isinstance(record, Mapping):
        raise UsageError(f"the recorded schedule is not a mapping, got {type(record).__name__}")
    record = dict(record)
    if record.get("kind", "vp") == "flow":
        return flow_schedule({"num_train_timesteps": record.get("num_train_timesteps", 1000),
                              "shift": record.get("shift", 1.0)})
    return vp_schedule({"prediction_type": record.get("prediction", "epsilon"),
                        **{k: v for k, v in record.items() if k in DEFAULT_VP_SCHEDULE}})

"""Numeric precision of a run's network passes (training.precision), and dynamic loss scaling for fp16.

- fp32: float32 everywhere, TF32 explicitly off (SiD's CIFAR-10 runs; parity with the published numbers).
- tf32: float32 tensors, TF32 tensor cores for matmuls and convolutions on Ampere and later GPUs.
- bf16: the network passes under bfloat16 autocast (TF32 for what stays float32). An EDM network's own fp16
  trunk (use_fp16, EDM's ImageNet models) is switched off: autocast runs it in bf16 instead, as DMD2 does.
- fp16: the network passes under float16 autocast, with dynamic loss scaling (LossScaler).

In every precision the master weights, the optimiser state, the losses, d'(y) and the EMA are float32: the
update functions cast the networks' outputs to float32 before any loss is formed. An EDM network that keeps its
fp16 trunk (use_fp16 on CUDA, in fp32 or tf32 runs) is trained with loss scaling too, as EDM trained it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass

import torch

from simcli.nets.denoiser import Denoiser

PRECISIONS = ("fp32", "tf32", "bf16", "fp16")
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class LossScaler:
    """Dynamic loss scaling: the loss is multiplied by `scale` before backward and the gradients divided by it after.

    A non-finite gradient with a finite loss is an overflow of the scaled gradients: the update is skipped and the
    scale halved (not a non-finite iteration, unless the scale is already at min_scale); after growth_interval
    good updates in a row the scale doubles. Disabled: scale 1, and every non-finite gradient counts.
    """

    enabled: bool = False
    scale: float = 2.0**16
    growth_interval: int = 2000
    good_updates: int = 0
    min_scale: float = 1.0
    overflows: int = 0

    @property
    def factor(self) -> float:
        """What the loss is multiplied by before backward."""
        return self.scale if self.enabled else 1.0

    def unscale_(self, grads: list[torch.Tensor]) -> None:
        """Divide the gradients by the scale, in place."""
        if self.enabled and self.scale != 1.0:
            torch._foreach_mul_(grads, 1.0 / self.scale)

    def update(self, loss_finite: bool, grads_finite: bool) -> tuple[bool, bool]:
        """(apply the step, the iteration counts as finite) after one update's gradients were checked."""
        if loss_finite and grads_finite:
            if self.enabled:
                self.good_updates += 1
                if self.good_updates >= self.growth_interval:
                    self.scale, self.good_updates = self.scale * 2, 0
            return True, True
        if not self.enabled or not loss_finite:
            return False, False
        self.good_updates = 0
        if self.scale <= self.min_scale:
            return False, False
        self.scale /= 2
        self.overflows += 1
        return False, True


def tf32_settings() -> tuple[bool, bool]:
    """(matmul, cuDNN) TF32 switches as they are now."""
    return torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32


def set_tf32(matmul: bool, cudnn: bool) -> None:
    torch.backends.cuda.matmul.allow_tf32 = matmul
    torch.backends.cudnn.allow_tf32 = cudnn


@dataclass(frozen=True)
class Precision:
    """The precision of one run on one device."""

    name: str
    device: torch.device

    def __post_init__(self) -> None:
        if self.name not in PRECISIONS:
            raise ValueError(f"unknown precision {self.name!r}; one of {', '.join(PRECISIONS)}")

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return AUTOCAST_DTYPES.get(self.name)

    def autocast(self) -> AbstractContextManager:
        """The context the network passes run in."""
        dtype = self.autocast_dtype
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=dtype)

    @contextlib.contextmanager
    def tf32(self) -> Iterator[None]:
        """TF32 off for fp32, on otherwise, while the block runs (process-wide switches, restored afterwards)."""
        before = tf32_settings()
        on = self.name != "fp32"
        set_tf32(on, on)
        try:
            yield
        finally:
            set_tf32(*before)

    def adapt(self, nets: list[Denoiser]) -> bool:
        """Prepare networks for this precision; returns whether a trained network runs an fp16 trunk that needs
        loss scaling. Under autocast an EDM network's own fp16 trunk is switched off (autocast decides the dtype)."""
        fp16_trunk = False
        for net in nets:
            if not net.use_fp16:
                continue
            if self.autocast_dtype is not None:
                net.use_fp16 = False
            elif self.device.type == "cuda":
                fp16_trunk = True
        return fp16_trunk or self.name == "fp16"


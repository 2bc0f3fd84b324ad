"""Reading weights files written with torch.save, and nothing else: torch.load(weights_only=True), so only tensors,
containers and plain numbers are rebuilt, and a pickle that asks for anything more (a class, a function: code) is
refused in one line before any of it runs. torch's own warnings about the file stay off simcli's output."""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path
from typing import Any

import torch

from simcli.errors import UsageError


def _why(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:160] or type(exc).__name__


def unpickler_detail(message: str) -> str:
    """The line of a weights_only refusal that says what was refused (torch wraps it in advice about weights_only)."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    told = [line for line in lines if not line.startswith(("Weights only load failed", "Please file an issue", "Check the",
                                                           "In PyTorch 2.6", "WeightsUnpickler error"))]
    return _why(Exception(told[0] if told else message))


def load_tensors(path: Path, hint: str, mmap: bool = False) -> Any:
    """torch.load(path, weights_only=True) on the CPU, memory-mapped where the file's format allows when `mmap`.

    A file that asks to import code is a one-line UsageError (hint: `hint`); other failures (not a torch file,
    truncated, damaged) are raised as they come, for the caller to word."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. torch's note on the pickle protocol of the file
            if mmap:
                try:
                    return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
                except RuntimeError as exc:  # files in torch's legacy (non-zip) format cannot be memory-mapped
                    if "mmap" not in str(exc):
                        raise
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        detail = unpickler_detail(str(exc))
        if "global" in detail.lower():  # weights_only refused to import a name: the file asks to run code
            raise UsageError(f"{path} needs more than tensors to load (refused, nothing in it was run): {detail}",
                             hint="simcli reads weights files with torch.load(weights_only=True) only; " + hint
                             ) from None
        raise

"""The `t2i` extra (diffusers, transformers, huggingface_hub, sentencepiece): the one check that its packages are
there, failing with a one-line UsageError that names the extra.

Imports neither torch nor diffusers at import time, so the teachers' name checks can use it without loading either.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from simcli.errors import UsageError

T2I_INSTALL = "pip install 'simcli[t2i]' (in a checkout: pip install -e '.[t2i]')"
T2I_PACKAGES = ("diffusers", "transformers", "huggingface_hub")
T2I_HINT = "the t2i extra installs diffusers, transformers and sentencepiece"


def t2i_missing(what: str) -> UsageError:
    """The error for a missing part of the extra: 'text-to-image teachers need WHAT: pip install ...'."""
    return UsageError(f"text-to-image teachers need {what}: {T2I_INSTALL}", hint=T2I_HINT)


def require_t2i_packages() -> None:
    """A UsageError naming the t2i extra when one of its packages cannot be found (nothing is imported)."""
    for package in T2I_PACKAGES:
        if importlib.util.find_spec(package) is None:
            raise t2i_missing(f"the {package} package")


def require_diffusers() -> Any:
    """The diffusers module; a UsageError naming the t2i extra when it (or a package it needs) is missing."""
    try:
        import diffusers
    except ImportError as exc:
        missing = getattr(exc, "name", None) or "diffusers"
        raise t2i_missing(f"the diffusers package ({missing} is missing)") from None
    return diffusers

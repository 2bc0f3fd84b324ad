"""What loading Hugging Face models needs around the load itself: the t2i extra's packages, quiet libraries, the
dtype keyword the installed versions take, and one-line failures.

Imports neither torch nor diffusers at import time.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from simcli.errors import UsageError
from simcli.store.hub import hf_library_version


def require_t2i_packages() -> None:
    """One-line UsageError naming the t2i extra when one of its packages cannot be found (simcli.nets.t2i_extra);
    then diffusers' and transformers' own output quietened."""
    from simcli.nets import t2i_extra

    t2i_extra.require_t2i_packages()
    quiet_libraries()


def quiet_libraries() -> None:
    """Keep diffusers' and transformers' own progress bars and advice off simcli's output (simcli reports what it
    loads); their errors still come through."""
    import diffusers.utils.logging as diffusers_logging
    import transformers.utils.logging as transformers_logging

    for logging in (diffusers_logging, transformers_logging):
        logging.set_verbosity_error()
        logging.disable_progress_bar()


def transformers_dtype(dtype: Any) -> dict[str, Any]:
    """{'dtype': dtype} for transformers 4.56 and later (or an unknown version), else {'torch_dtype': dtype}."""
    return {"dtype" if (hf_library_version("transformers") or (4, 56)) >= (4, 56) else "torch_dtype": dtype}


def pipeline_dtype(dtype: Any) -> dict[str, Any]:
    """{'dtype': dtype} for the diffusers pipelines that take it (and deprecate torch_dtype), else {'torch_dtype': ...}."""
    try:
        from diffusers.utils import _resolve_dtype  # noqa: F401 - present where pipelines accept `dtype`
    except ImportError:
        return {"torch_dtype": dtype}
    return {"dtype": dtype}


def missing_tokenizer_packages(tokenizer_folder: Path) -> list[str]:
    """sentencepiece / protobuf when a tokenizer comes as spiece.model alone (no tokenizer.json) and they are missing."""
    if (tokenizer_folder / "tokenizer.json").is_file() or not (tokenizer_folder / "spiece.model").is_file():
        return []
    missing = []
    for package, module in (("sentencepiece", "sentencepiece"), ("protobuf", "google.protobuf")):
        try:
            found = importlib.util.find_spec(module) is not None
        except ImportError:  # the parent package (google) is missing
            found = False
        if not found:
            missing.append(package)
    return missing


def tokenizer_packages_error(tokenizer_folder: Path) -> UsageError | None:
    """The one-line error for a sentencepiece tokenizer whose packages are missing, or None."""
    from simcli.nets.t2i_extra import T2I_INSTALL

    missing = missing_tokenizer_packages(tokenizer_folder)
    if not missing:
        return None
    return UsageError(f"reading the tokenizer {tokenizer_folder / 'spiece.model'} needs the {' and '.join(missing)} "
                      f"package(s): {T2I_INSTALL}", hint="the t2i extra installs sentencepiece and protobuf")


def loading_failed(what: str, folder: Path, exc: Exception, hint: str) -> UsageError:
    """One line: 'cannot load the WHAT of FOLDER: ExcType: message'."""
    return UsageError(f"cannot load the {what} of {folder}: {type(exc).__name__}: {' '.join(str(exc).split())[:200]}",
                      hint=hint)

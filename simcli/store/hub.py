"""The Hugging Face Hub, for every model simcli reads from it: text-to-image teachers (simcli.teachers.pipeline_source)
and the CLIP and aesthetic models of `simcli eval` (simcli.eval.text_image, simcli.eval.aesthetic).

One function per question:
- where the cache is (`hf_home`, `hf_hub_cache`: HF_HUB_CACHE, else HF_HOME/hub, else XDG/~/.cache, as
  huggingface_hub computes them, read from the environment now);
- whether downloads are off (`hub_offline`: HF_HUB_OFFLINE, TRANSFORMERS_OFFLINE, SIMCLI_OFFLINE) and why;
- whether the Hub answers (`hub_unreachable`: a TCP connect to HF_ENDPOINT's host within HF_HUB_ETAG_TIMEOUT
  seconds, default 10, skipped behind a proxy), so a machine without network fails fast rather than through
  huggingface_hub's retries (about 25 s a file);
- the commands that pre-download a repository and store a token, for the installed huggingface_hub
  (`download_command`, `login_command`; the installed version of a Hugging Face library: `hf_library_version`);
- a repository's files from the cache, else downloaded (`hub_snapshot`; `cached_hub_file` for one file, cache only);
- the one-line error for a model that is neither cached nor downloadable (`hub_missing_error`).

Nothing here imports torch, and huggingface_hub only inside the functions that download or read the cache.
"""

from __future__ import annotations

import os
import socket
import urllib.parse
from pathlib import Path

from simcli.errors import UsageError
from simcli.store.cache import OFFLINE_ENV

HUB_ENDPOINT = "https://huggingface.co"
DEFAULT_CONNECT_TIMEOUT_S = 10.0
PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")
OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", OFFLINE_ENV)
# Never fetched by hub_snapshot: fp16 variants and the non-safetensors weight formats.
IGNORED_FILES = ("*.fp16.*", "*.bin", "*.pth", "*.ckpt", "*.msgpack", "*.h5", "*.onnx")


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def _one_line(exc: BaseException, limit: int = 160) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())[:limit]}"


# ---------------------------------------------------------------------------------------------- the cache


def hf_home() -> Path:
    """HF_HOME as huggingface_hub would compute it now (else $XDG_CACHE_HOME/huggingface, else ~/.cache/huggingface)."""
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME") or "~/.cache", "huggingface")
    return Path(os.path.expandvars(home)).expanduser()


def hf_hub_cache() -> Path:
    """The Hub cache as huggingface_hub would compute it now (HF_HUB_CACHE, else HF_HOME/hub, else XDG/~/.cache)."""
    explicit = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    if explicit:
        return Path(os.path.expandvars(explicit)).expanduser()
    return hf_home() / "hub"


def cached_hub_file(repo_id: str, names: tuple[str, ...]) -> Path | None:
    """The first of `names` that the cache holds for `repo_id` (its main revision), or None; never downloads."""
    from huggingface_hub import try_to_load_from_cache

    for name in names:
        found = try_to_load_from_cache(repo_id, name, cache_dir=str(hf_hub_cache()))
        if isinstance(found, str) and Path(found).is_file():
            return Path(found)
    return None


# ---------------------------------------------------------------------------------------------- the network


def hub_offline() -> str | None:
    """Why no download may be tried ('offline mode, HF_HUB_OFFLINE=1', ...), or None."""
    for name in OFFLINE_VARIABLES:
        if _env_true(name):
            return f"offline mode, {name}={os.environ[name]}"
    return None


def hub_unreachable(endpoint: str | None = None, timeout_s: float | None = None) -> str | None:
    """Why the Hub cannot be reached (DNS, refused, timeout), or None; a TCP connect, skipped behind a proxy
    (HTTPS_PROXY / ALL_PROXY), where a local connect proves nothing."""
    if any(os.environ.get(v) for v in PROXY_VARIABLES):
        return None
    url = urllib.parse.urlsplit(endpoint or os.environ.get("HF_ENDPOINT") or HUB_ENDPOINT)
    if timeout_s is None:
        try:
            timeout_s = float(os.environ.get("HF_HUB_ETAG_TIMEOUT") or DEFAULT_CONNECT_TIMEOUT_S)
        except ValueError:
            timeout_s = DEFAULT_CONNECT_TIMEOUT_S
    host = url.hostname or urllib.parse.urlsplit(HUB_ENDPOINT).hostname or ""
    port = url.port or (80 if url.scheme == "http" else 443)
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return None
    except OSError as exc:
        return f"{host} unreachable: {_one_line(exc, 120)}"


def hf_library_version(package: str) -> tuple[int, int] | None:
    """(major, minor) of an installed Hugging Face library (huggingface_hub, transformers, ...); None when it is not
    installed or its version string is odd."""
    from importlib.metadata import version

    try:
        major, minor = (int(part) for part in version(package).split(".")[:2])
    except Exception:
        return None
    return major, minor


def download_command(repo_id: str, revision: str | None = None, *, files: tuple[str, ...] = (),
                     exclude: tuple[str, ...] = ()) -> str:
    """The shell command that puts a Hub repository (or some of its `files`) into the cache, for the installed
    huggingface_hub: `hf download` (huggingface-cli download before 0.34)."""
    installed = hf_library_version("huggingface_hub")  # None: the current CLI name
    cli = "huggingface-cli download" if installed is not None and installed < (0, 34) else "hf download"
    words = [cli, repo_id, *files]
    words += [f'--exclude "{pattern}"' for pattern in exclude]
    words += [f"--revision {revision}"] if revision else []
    return " ".join(words)


def login_command() -> str:
    """The shell command that stores a Hugging Face token, for the installed huggingface_hub: `hf auth login`
    (huggingface-cli login before 0.34)."""
    installed = hf_library_version("huggingface_hub")
    return "huggingface-cli login" if installed is not None and installed < (0, 34) else "hf auth login"


# ---------------------------------------------------------------------------------------------- refusals


def hub_missing_error(what: str, repo_id: str, command: str, why: str, alternative: str) -> UsageError:
    """One line for a model that is neither in the Hugging Face cache nor downloadable: repo, command, HF_HOME."""
    home = os.environ.get("HF_HOME") or f"unset, so {hf_home()}"
    return UsageError(
        f"{what} {repo_id} is not in the Hugging Face cache {hf_hub_cache()} ({why})",
        hint=f"where there is network, run {command} with the same HF_HOME (now {home}); or {alternative}",
    )


def _snapshot_refusal(repo_id: str, revision: str | None, cache: Path, reason: str) -> UsageError:
    return UsageError(f"{repo_id} is not in the Hugging Face cache {cache} and cannot be downloaded ({reason}); "
                      f"pre-download it with `{download_command(repo_id, revision)}` (into $HF_HOME/hub)",
                      hint="set HF_HOME (or HF_HUB_CACHE) to the cache that holds it; HF_HUB_OFFLINE=1 keeps off the network")


def hub_snapshot(repo_id: str, revision: str | None, patterns: tuple[str, ...],
                 ignore: tuple[str, ...] = IGNORED_FILES) -> Path:
    """The cached snapshot folder of a Hub repository holding `patterns`: from the cache, else downloaded.

    One-line UsageError naming the repo, the cache and the pre-download command when the files are not cached
    and cannot be downloaded (offline, no network, refused). Needs huggingface_hub (callers check for it).
    """
    from huggingface_hub import snapshot_download

    cache = hf_hub_cache()
    kwargs = {"revision": revision, "allow_patterns": list(patterns), "ignore_patterns": list(ignore),
              "cache_dir": str(cache)}
    try:
        folder = Path(snapshot_download(repo_id, local_files_only=True, **kwargs))
        if all(next(folder.glob(pattern), None) is not None for pattern in patterns):
            return folder
    except Exception:  # not cached (or only partly): try the Hub unless offline
        pass
    reason = hub_offline() or hub_unreachable()
    if reason:
        raise _snapshot_refusal(repo_id, revision, cache, reason)
    try:
        return Path(snapshot_download(repo_id, **kwargs))
    except Exception as exc:  # refused, gated, not found, interrupted: one line
        raise _snapshot_refusal(repo_id, revision, cache, _one_line(exc)) from None

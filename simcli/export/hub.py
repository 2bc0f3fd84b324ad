"""`--push-to-hub REPO`: the exported folder uploaded to a Hugging Face model repository as one commit.

`check_hub_push` runs before anything is written: a valid repository id, huggingface_hub installed, downloads not
switched off (HF_HUB_OFFLINE, SIMCLI_OFFLINE, ...), the Hub reachable, and a token (HF_TOKEN, else the one `hf auth
login` stored). `push_folder` then creates the repository if needed and adds every file of the finished folder in a
single commit (HfApi.create_commit): the files are uploaded first and the commit made last, so an upload that fails
part-way leaves no commit, never a partial export that looks finished. Every failure is one UsageError naming the
repository and the cause.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from simcli.errors import UsageError
from simcli.store.hub import hub_offline, hub_unreachable, login_command


def _one_line(exc: BaseException, limit: int = 200) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())[:limit]}"


def check_hub_push(repo_id: str) -> str:
    """The token to push with, after checking that a push to `repo_id` can be tried; one-line UsageError otherwise."""
    try:
        from huggingface_hub import get_token
        from huggingface_hub.utils import HFValidationError, validate_repo_id
    except ImportError:
        raise UsageError(f"--push-to-hub {repo_id} needs huggingface_hub", hint="pip install huggingface_hub") from None
    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        raise UsageError(f"--push-to-hub {repo_id!r} is not a repository id ({' '.join(str(exc).split())[:160]})",
                         hint="give OWNER/NAME, for example your-name/cifar10-sim-one-step") from None
    reason = hub_offline() or hub_unreachable()
    if reason:
        raise UsageError(f"cannot push to {repo_id} on the Hugging Face Hub ({reason})",
                         hint="export without --push-to-hub, and push the folder where there is network")
    token = get_token()
    if not token:
        raise UsageError(f"cannot push to {repo_id}: no Hugging Face token (HF_TOKEN is unset and none is stored)",
                         hint=f"run `{login_command()}` or set HF_TOKEN to a token with write access")
    return token


def push_folder(folder: Path, repo_id: str, token: str, message: str) -> dict[str, Any]:
    """Upload every file of `folder` to the model repository `repo_id` (created if missing) in one commit; returns
    {'repo', 'commit_url', 'files'}. Any Hub error (refused, unauthorised, interrupted) is one UsageError."""
    from huggingface_hub import CommitOperationAdd, HfApi

    files = sorted(p.relative_to(folder).as_posix() for p in Path(folder).rglob("*") if p.is_file())
    try:
        api = HfApi(token=token)
        api.create_repo(repo_id, repo_type="model", exist_ok=True)
        operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(Path(folder) / name)) for name in files]
        info = api.create_commit(repo_id, operations=operations, commit_message=message, repo_type="model")
    except Exception as exc:  # HfHubHTTPError (401, 403, 404, ...), connection errors, interrupted uploads: one line
        raise UsageError(f"pushing {folder} to {repo_id} failed ({_one_line(exc)})",
                         hint=f"the exported folder is complete; check the token (`{login_command()}`) and "
                              "write access to the repository, then push again") from None
    return {"repo": repo_id, "commit_url": getattr(info, "commit_url", None), "files": files}

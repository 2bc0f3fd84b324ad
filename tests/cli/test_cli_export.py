"""`simcli export`: bad input is one line and exit code 2 with nothing written; --force replaces a folder whole;
--push-to-hub makes exactly one commit with every file (a fake HfApi: no network) and reports a failed push in one
line naming the repository."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers.tiny_edm import write_tiny_edm

FAST = ["--preset", "tiny", "--batch-size", "4", "--steps", "2", "--set", "logging.grid_samples=4"]
REPO = "someone/tiny-sim"
OFFLINE = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "SIMCLI_OFFLINE")


@pytest.fixture(scope="module")
def edm_run(tmp_path_factory):
    """A tiny distilled EDM generator's run directory (shared; never modified)."""
    from tests.cli.conftest import run_cli

    root = tmp_path_factory.mktemp("export")
    teacher = write_tiny_edm(root / "teacher.pkl")
    run = root / "run"
    result = run_cli("distill", "--teacher", teacher, *FAST, "--out", run)
    assert result.exit_code == 0, result.output
    return run


def _export(cli, *args):
    return cli("export", *args)


def test_help_lists_the_options(cli):
    result = cli("export", "--help")
    assert result.exit_code == 0
    for text in ("RUN_DIR|GENERATOR", "--format", "--out", "--push-to-hub", "--force", "--json", "Examples:"):
        assert text in result.stdout


@pytest.mark.parametrize("case", ["missing", "no-generator", "mixture", "format", "offline", "bad-repo", "out-is-run"])
def test_bad_input_is_one_line_and_nothing_is_written(case, cli, assert_usage_error, tree, edm_run, tiny_run, tmp_path,
                                                       monkeypatch):
    source, fmt, extra, fragments = edm_run, "safetensors", [], []
    if case == "missing":
        source, fragments = tmp_path / "nowhere", ["generator not found", "nowhere"]
    elif case == "no-generator":
        (tmp_path / "empty").mkdir()
        source, fragments = tmp_path / "empty", ["no generator snapshot in"]
    elif case == "mixture":
        source, fragments = tiny_run[1], ["'mlp' network", "EDM-type generators"]
    elif case == "format":
        fmt, fragments = "onnx", ["unknown --format 'onnx'", "safetensors"]
    elif case == "offline":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        extra, fragments = ["--push-to-hub", REPO], [f"cannot push to {REPO}", "HF_HUB_OFFLINE=1"]
    elif case == "bad-repo":
        extra, fragments = ["--push-to-hub", "not a/repo//"], ["is not a repository id"]
    out = tmp_path / "out"
    if case == "out-is-run":  # --force would replace the run directory itself
        name = "generator-0000000.008.safetensors"
        (tmp_path / "run").mkdir()
        (tmp_path / "run" / name).write_bytes((edm_run / name).read_bytes())
        source = out = tmp_path / "run"
        extra, fragments = ["--force"], ["holds the generator being exported"]
    before = tree(tmp_path)
    result = _export(cli, source, "--format", fmt, "--out", out, *extra)
    assert_usage_error(result, *fragments)
    assert tree(tmp_path) == before  # no --out, no temporary folder


def test_existing_out_is_refused_without_force_and_replaced_whole_with_it(cli, assert_usage_error, tree, edm_run,
                                                                          tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "stale.txt").write_text("from an earlier export")
    before = tree(tmp_path)
    assert_usage_error(_export(cli, edm_run, "--format", "safetensors", "--out", out), "exists and is not empty",
                       "--force")
    assert tree(tmp_path) == before
    result = _export(cli, edm_run, "--format", "safetensors", "--out", out, "--force", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert sorted(p.name for p in out.iterdir()) == sorted(summary["files"])  # stale.txt gone with the old folder
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporary or set-aside folder left
    assert summary["files"] == ["out.safetensors", "README.md", "grid-0000000.008.png", "distill-config.json",
                                "simcli-export.json"]
    written = json.loads((out / "simcli-export.json").read_text())
    assert written == {k: v for k, v in summary.items() if k != "hub"}


class FakeHub:
    """Stands in for huggingface_hub.HfApi: records create_repo and create_commit calls; fails where told to."""

    calls: list[tuple[str, dict]] = []
    fail_commit = False

    def __init__(self, token=None):
        self.token = token

    def create_repo(self, repo_id, **kwargs):
        FakeHub.calls.append(("create_repo", {"repo_id": repo_id, "token": self.token, **kwargs}))
        return f"https://huggingface.co/{repo_id}"

    def create_commit(self, repo_id, operations, commit_message, **kwargs):
        ops = [(op.path_in_repo, Path(op.path_or_fileobj).read_bytes()) for op in operations]
        FakeHub.calls.append(("create_commit", {"repo_id": repo_id, "operations": ops, "message": commit_message}))
        if FakeHub.fail_commit:
            raise ConnectionError("connection reset by peer\nwhile uploading out.safetensors")
        return type("CommitInfo", (), {"commit_url": f"https://huggingface.co/{repo_id}/commit/abc123"})()


@pytest.fixture
def fake_hub(monkeypatch):
    import huggingface_hub

    for name in OFFLINE:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_TOKEN", "hf_fake_token")
    monkeypatch.setattr("simcli.export.hub.hub_unreachable", lambda *a, **k: None)  # no network here
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeHub)
    FakeHub.calls, FakeHub.fail_commit = [], False
    return FakeHub


def test_push_to_hub_makes_one_commit_with_every_file(cli, edm_run, tmp_path, fake_hub):
    out = tmp_path / "out"
    result = _export(cli, edm_run, "--format", "safetensors", "--out", out, "--push-to-hub", REPO, "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["hub"] == {"repo": REPO, "commit_url": f"https://huggingface.co/{REPO}/commit/abc123",
                              "files": sorted(summary["files"])}
    assert [name for name, _ in fake_hub.calls] == ["create_repo", "create_commit"]
    repo_call, commit_call = (kwargs for _, kwargs in fake_hub.calls)
    assert repo_call == {"repo_id": REPO, "token": "hf_fake_token", "repo_type": "model", "exist_ok": True}
    uploaded = dict(commit_call["operations"])
    assert uploaded == {p.name: p.read_bytes() for p in out.iterdir()}  # the finished folder, every file, once


def test_a_failed_push_is_one_line_naming_the_repo(cli, assert_usage_error, edm_run, tmp_path, fake_hub):
    fake_hub.fail_commit = True
    out = tmp_path / "out"
    line = assert_usage_error(_export(cli, edm_run, "--format", "safetensors", "--out", out, "--push-to-hub", REPO),
                              f"to {REPO} failed", "ConnectionError: connection reset by peer while uploading")
    assert "the exported folder is complete" in line
    assert [name for name, _ in fake_hub.calls] == ["create_repo", "create_commit"]  # one commit tried, none made
    assert (out / "README.md").is_file()  # the local export is whole


def test_no_token_is_one_line_before_anything_is_written(cli, assert_usage_error, tree, edm_run, tmp_path, fake_hub,
                                                         monkeypatch):
    import huggingface_hub

    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)  # nor a stored one
    before = tree(tmp_path)
    result = _export(cli, edm_run, "--format", "safetensors", "--out", tmp_path / "out", "--push-to-hub", REPO)
    assert_usage_error(result, f"cannot push to {REPO}: no Hugging Face token", "auth login")
    assert tree(tmp_path) == before and fake_hub.calls == []

"""The SIM authors' released generator (SIM-DiT-600M): its noise table, its checkpoint layout read from a file built to
it (tests/helpers/sim_release_file.py), hostile and malformed files refused in one line, and the official name offline."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

pytest.importorskip("diffusers")

from simcli.cli.app import app  # noqa: E402
from simcli.errors import UsageError  # noqa: E402
from simcli.nets.sim_noise_table import sim_release_bins, sim_release_sigmas  # noqa: E402
from simcli.nets.train_schedule import sigma_to_timestep, vp_sigma_bins  # noqa: E402
from simcli.sampling import sim_release  # noqa: E402
from simcli.sampling.generator import load_generator  # noqa: E402
from tests.helpers.sim_release_file import original_pixart_state_dict, tiny_release, write_sim_checkpoint  # noqa: E402
from tests.helpers.tiny_pixart import write_tiny_pixart  # noqa: E402

# ---------------------------------------------------------------------------------------------- the noise table


def test_the_authors_table_tops_at_156_6155_where_diffusers_reaches_157_4073():
    exact = sim_release_sigmas(dtype=torch.float64)
    theirs = sim_release_sigmas()  # float32, as their code builds it
    assert exact.shape == theirs.shape == (1001,)
    assert round(float(exact[0]), 4) == 156.6155  # the paper's noise range top
    assert float(theirs[0]) == pytest.approx(156.61569, abs=1e-5)
    assert round(float(vp_sigma_bins()[-1]), 4) == 157.4073  # diffusers' linear schedule, top
    assert float(exact[-2]) == pytest.approx(0.0100005, abs=1e-9)  # bottom: sqrt(1e-4 / (1 - 1e-4))
    assert float(vp_sigma_bins()[0]) == pytest.approx(0.0100005, abs=1e-9)  # the same first beta in both
    assert float(exact[-1]) == 0.0 and bool((exact[:-1] > exact[1:]).all())
    assert float(exact[1]) == pytest.approx(155.0431, abs=1e-3)


def test_sigma_init_2_5_is_timestep_440_in_both_tables_and_exact_in_bfloat16():
    bins = sim_release_bins()
    assert bins.shape == (1000,) and float(bins[0]) == pytest.approx(0.0100008, abs=1e-7)
    assert int(sigma_to_timestep(torch.tensor([2.5]), bins)) == 440
    assert int(sigma_to_timestep(torch.tensor([2.5]), vp_sigma_bins())) == 440
    assert float(torch.tensor(440.0).to(torch.bfloat16)) == 440.0  # their timestep passes through bf16 unchanged
    assert float(bins[440]) == pytest.approx(2.4995, abs=1e-4)


# ---------------------------------------------------------------------------------------------- the checkpoint


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory) -> Path:
    return write_tiny_pixart(tmp_path_factory.mktemp("pixart") / "pipe")


@pytest.fixture(scope="module")
def transformer(pipeline):
    from diffusers import PixArtTransformer2DModel

    return PixArtTransformer2DModel.from_pretrained(pipeline, subfolder="transformer").eval()


@pytest.fixture()
def tiny(monkeypatch, pipeline, transformer):
    monkeypatch.setattr(sim_release, "LOCAL_RELEASE", tiny_release(pipeline, transformer))


def test_a_file_in_the_release_layout_loads_into_the_diffusers_transformer_exactly(tmp_path, tiny, transformer):
    original = original_pixart_state_dict(transformer)
    file = write_sim_checkpoint(tmp_path / "checkpoint-2024-07-02.pt", original)
    net, meta, found = load_generator(file)
    assert found == file
    loaded, expected = net.network.state_dict(), transformer.state_dict()
    assert sorted(loaded) == sorted(expected)
    assert all(torch.equal(loaded[k], expected[k]) for k in expected)
    assert meta["sigma_init"] == 2.5 and meta["spec"]["teacher"] == sim_release.LOCAL_RELEASE.teacher
    assert meta["prompts_as_given"] is True and meta["architecture"]["kind"] == "diffusers"
    assert int(net.network_time(torch.tensor([2.5]))) == 440 and net.guidance_scale == 1.0
    assert float(net.sigma_bins[-1]) == pytest.approx(156.61569, abs=1e-5)


def test_the_table_and_the_original_only_entries_are_optional(tmp_path, tiny, transformer):
    original = original_pixart_state_dict(transformer)
    del original["pos_embed"], original["y_embedder.y_embedding"]
    file = write_sim_checkpoint(tmp_path / "bare.pt", original, table=False)
    net, _, _ = load_generator(file)
    assert all(torch.equal(net.network.state_dict()[k], v) for k, v in transformer.state_dict().items())


def _refusal(file: Path) -> str:
    with pytest.raises(UsageError) as caught:
        load_generator(file)
    message = caught.value.message
    assert str(file) in message and "\n" not in message
    return message


@pytest.mark.parametrize(("change", "words"), [
    (lambda sd: sd.pop("blocks.1.mlp.fc2.bias"), "1 missing (transformer.transformer_blocks.1.ff.net.2.bias)"),
    (lambda sd: sd.update({"blocks.0.attn.rel_pos_h": torch.zeros(3, 8)}), "not PixArt-alpha's (blocks.0.attn.rel_pos_h)"),
    (lambda sd: sd.update({"t_block.1.weight": torch.zeros(6, 24)}), "with other shapes (transformer.adaln_single.linear.weight [6, 24]"),
    (lambda sd: sd.update({"pos_embed": sd["pos_embed"] + 0.1}), "pos_embed differs from PixArt-alpha's sin-cos table"),
    (lambda sd: sd.update({"y_embedder.y_embedding": torch.zeros(77, 32)}), "y_embedder.y_embedding is [77, 32], not [120, 32]"),
    (lambda sd: sd.update({"final_layer.linear.bias": torch.zeros(32, dtype=torch.int64)}), "not floating point"),
    (lambda sd: sd.update({"blocks.0.attn.qkv.bias": torch.full((72,), float("nan"))}), "NaN or Inf"),
])
def test_a_file_off_the_layout_is_refused_in_one_line_naming_it(tmp_path, tiny, transformer, change, words):
    original = original_pixart_state_dict(transformer)
    change(original)
    assert words in _refusal(write_sim_checkpoint(tmp_path / "bad.pt", original))


def test_files_of_another_structure_are_refused(tmp_path, tiny, transformer):
    original = original_pixart_state_dict(transformer)
    assert "no 'ema' state_dict" in _refusal(_saved(tmp_path / "a.pt", {"model": original}))
    assert "do not all start with 'module.'" in _refusal(write_sim_checkpoint(tmp_path / "b.pt", original, prefix=""))
    assert "not named tensors" in _refusal(_saved(tmp_path / "c.pt", {"ema": {"module.model.x": 3}}))
    assert "outside the PixArt network (module.vae.w)" in _refusal(
        _saved(tmp_path / "d.pt", {"ema": {"module.model.t_block.1.bias": torch.zeros(1), "module.vae.w": torch.zeros(1)}}))
    stored = write_sim_checkpoint(tmp_path / "e.pt", original)
    state = torch.load(stored, weights_only=True)
    state["ema"]["module.u"] = state["ema"]["module.u"] * 1.01
    assert "noise table 'u' is not the SIM release's" in _refusal(_saved(tmp_path / "e.pt", state))
    (tmp_path / "f.pt").write_bytes(b"not a torch file")
    assert "not a readable PyTorch checkpoint" in _refusal(tmp_path / "f.pt")


def _saved(path: Path, obj) -> Path:
    torch.save(obj, path)
    return path


class _RunsCode:
    """Unpickling this makes a directory: what any pickled callable could do instead."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.makedirs, (str(self.marker),)


def test_a_pickle_that_would_run_code_is_refused_and_nothing_runs(tmp_path, tiny):
    marker = tmp_path / "ran"
    file = _saved(tmp_path / "hostile.pt", {"ema": {"module.model.t_block.1.bias": _RunsCode(marker)}})
    assert "needs more than tensors to load (refused, nothing in it was run)" in _refusal(file)
    assert not marker.exists()
    result = CliRunner().invoke(app, ["sample", "--generator", str(file), "--prompt", "x", "--out", str(tmp_path / "o"),
                                      "--n", "1", "--device", "cpu"])
    assert result.exit_code == 2 and not marker.exists() and not (tmp_path / "o").exists()
    assert len(result.output.strip().splitlines()) == 1 and "nothing in it was run" in result.output


# ---------------------------------------------------------------------------------------------- the official name


def test_offline_the_official_name_is_exit_2_naming_the_repo_the_file_and_the_command(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "o"
    result = CliRunner().invoke(app, ["sample", "--generator", "sim-dit-600m", "--prompt", "x", "--out", str(out),
                                      "--device", "cpu"])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1
    assert "maple-research-lab/SIM" in lines[0] and "checkpoint-2024-07-02.pt" in lines[0]
    assert "download maple-research-lab/SIM checkpoint-2024-07-02.pt" in lines[0] and "HF_HUB_OFFLINE=1" in lines[0]
    assert not out.exists() and not (tmp_path / "hf").exists()


def test_the_official_name_without_prompts_is_refused_before_any_download(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sim_release, "hub_checkpoint", lambda release: pytest.fail("downloaded"))
    result = CliRunner().invoke(app, ["sample", "--generator", "sim-dit-600m", "--out", str(tmp_path / "o.npz")])
    assert result.exit_code == 2 and "its samples need prompts" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_a_folder_named_like_the_release_is_a_run_directory_not_the_release(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert sim_release.is_sim_release("sim-dit-600m") and sim_release.is_sim_release(tmp_path / "x.pt")
    (tmp_path / "sim-dit-600m").mkdir()
    assert not sim_release.is_sim_release("sim-dit-600m")
    assert not sim_release.is_sim_release(tmp_path / "generator-000001.safetensors")
    assert not sim_release.is_sim_release(tmp_path / "state-0000000.320.pt")  # a simcli run's state: not a release


def test_eval_of_the_release_samples_it_on_prompts_and_needs_them(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sim_release, "hub_checkpoint", lambda release: pytest.fail("downloaded"))
    result = CliRunner().invoke(app, ["eval", "--generator", "sim-dit-600m", "--aesthetic"])  # no prompts: no download
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1
    assert "SIM authors' text-to-image generator: its images need prompts" in result.output
    assert "--generator sim-dit-600m --prompts FILE" in result.output
    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a cat\n")
    result = CliRunner().invoke(app, ["eval", "--generator", "sim-dit-600m", "--aesthetic", "--prompts", str(prompts)])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1
    assert "maple-research-lab/SIM" in result.output and "checkpoint-2024-07-02.pt" in result.output


def _pixart_xl_2_512_original_shapes(depth: int = 28, hidden: int = 1152, caption: int = 4096) -> dict[str, list[int]]:
    """PixArt-XL-2 at 512 px under its original names, shapes as the release's model files define them
    (models/PixArt.py: patch 2, 4 -> 8 channels, mlp ratio 4, 64 x 64 latents; PixArt_blocks.py: 256 frequencies)."""
    shapes = {"x_embedder.proj.weight": [hidden, 4, 2, 2], "x_embedder.proj.bias": [hidden],
              "t_embedder.mlp.0.weight": [hidden, 256], "t_embedder.mlp.0.bias": [hidden],
              "t_embedder.mlp.2.weight": [hidden, hidden], "t_embedder.mlp.2.bias": [hidden],
              "t_block.1.weight": [6 * hidden, hidden], "t_block.1.bias": [6 * hidden],
              "y_embedder.y_proj.fc1.weight": [hidden, caption], "y_embedder.y_proj.fc1.bias": [hidden],
              "y_embedder.y_proj.fc2.weight": [hidden, hidden], "y_embedder.y_proj.fc2.bias": [hidden],
              "y_embedder.y_embedding": [120, caption], "pos_embed": [1, 32 * 32, hidden],
              "final_layer.linear.weight": [2 * 2 * 8, hidden], "final_layer.linear.bias": [32],
              "final_layer.scale_shift_table": [2, hidden]}
    for n in range(depth):
        b = f"blocks.{n}"
        shapes |= {f"{b}.scale_shift_table": [6, hidden],
                   f"{b}.attn.qkv.weight": [3 * hidden, hidden], f"{b}.attn.qkv.bias": [3 * hidden],
                   f"{b}.attn.proj.weight": [hidden, hidden], f"{b}.attn.proj.bias": [hidden],
                   f"{b}.cross_attn.q_linear.weight": [hidden, hidden], f"{b}.cross_attn.q_linear.bias": [hidden],
                   f"{b}.cross_attn.kv_linear.weight": [2 * hidden, hidden], f"{b}.cross_attn.kv_linear.bias": [2 * hidden],
                   f"{b}.cross_attn.proj.weight": [hidden, hidden], f"{b}.cross_attn.proj.bias": [hidden],
                   f"{b}.mlp.fc1.weight": [4 * hidden, hidden], f"{b}.mlp.fc1.bias": [4 * hidden],
                   f"{b}.mlp.fc2.weight": [hidden, 4 * hidden], f"{b}.mlp.fc2.bias": [hidden]}
    return shapes


def test_the_real_release_layout_fits_the_shipped_pixart_alpha_512_network_exactly():
    from simcli.nets.pixart_original_keys import ORIGINAL_ONLY, diffusers_state_dict
    from simcli.nets.registry import meta_network, shape_mismatches

    shapes = _pixart_xl_2_512_original_shapes()
    total = sum(torch.Size(s).numel() for s in shapes.values())
    assert total == 612_527_264 and total * 4 / 1e9 == pytest.approx(2.45, abs=0.005)  # the Hub file's 2.45 GB, float32
    original = {k: torch.empty(s, device="meta") for k, s in shapes.items() if k not in ORIGINAL_ONLY}
    converted, unplaced = diffusers_state_dict(original)
    assert unplaced == []
    skeleton = meta_network(sim_release.release_architecture(sim_release.SIM_DIT_600M))
    assert shape_mismatches(skeleton.state_dict(), {f"transformer.{k}": v for k, v in converted.items()}) == []
    assert list(skeleton.network.pos_embed.pos_embed.shape) == shapes["pos_embed"]

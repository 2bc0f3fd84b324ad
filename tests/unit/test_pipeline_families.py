"""Every pipeline family as a teacher: recognised from model_index.json, loaded into a DiffusersDenoiser, prompts
encoded exactly as the family's own encode_prompt, latents decoded as its VAE and image processor do, the whole
pipeline as its own class; the official names offline.

Runs on the tiny random pipelines of tests/helpers/tiny_pipelines.py saved into temporary folders; no network.
"""

from __future__ import annotations

import inspect
import json
import shutil
import time

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from diffusers import DiffusionPipeline  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from simcli.cli.app import app  # noqa: E402
from simcli.errors import UsageError  # noqa: E402
from simcli.nets.diffusers_denoiser import DiffusersDenoiser  # noqa: E402
from simcli.store.hub import download_command, login_command  # noqa: E402
from simcli.teachers.hub_teachers import HUB_TEACHERS  # noqa: E402
from simcli.teachers.pipeline_families import FAMILIES as PIPELINE_FAMILIES  # noqa: E402
from simcli.teachers.registry import check_teacher, known_teachers, load_teacher, teacher_pipeline  # noqa: E402
from tests.helpers.tiny_pipelines import PIPELINE_CLASSES, write_tiny_pipeline  # noqa: E402

PROMPTS = ["a photo of a cat", "Red HOUSE on the mountain at sunset, with a big tree"]

# family -> (network class, text_dim, pooled_dim, guidance, sample_shape, vae_scale_factor, schedule kind)
EXPECTED = {
    "sd3": ("SD3Transformer2DModel", 64, 48, "cfg", (16, 8, 8), 2, "flow"),
    "flux": ("FluxTransformer2DModel", 32, 32, "embedded", (16, 128, 128), 2, "flow"),  # FluxPipeline's 1024 px
    "sana": ("SanaTransformer2DModel", 16, 0, "cfg", (32, 8, 8), 4, "flow"),
    "sdxl": ("UNet2DConditionModel", 48, 32, "cfg", (4, 8, 8), 2, "vp"),
    "sd15": ("UNet2DConditionModel", 32, 0, "cfg", (4, 8, 8), 2, "vp"),
    "pixart-sigma": ("PixArtTransformer2DModel", 32, 0, "cfg", (4, 8, 8), 2, "vp"),
}
FAMILY_LIST = list(EXPECTED)
MAX_TOKENS = {"sd3": 256, "flux": 512, "sana": 300, "sdxl": 77, "sd15": 77, "pixart-sigma": 300}  # pipeline defaults


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("families")
    return {family: write_tiny_pipeline(family, root / family) for family in FAMILY_LIST}


@pytest.fixture(scope="module")
def loaded(folders):
    """family -> (teacher, encoder, the family's own pipeline loaded by diffusers)."""
    out = {}
    for family, folder in folders.items():
        teacher = load_teacher(f"diffusers:{folder}")
        pipe = DiffusionPipeline.from_pretrained(folder)
        pipe.set_progress_bar_config(disable=True)
        out[family] = (teacher, teacher.pipeline.encoder(), pipe)
    return out


def _pipeline_encoding(family: str, pipe, prompts: list[str]):
    """(embeds, mask or None, pooled or None, negative embeds, negative mask or None, negative pooled or None) from
    the pipeline's own encode_prompt, negative prompt "" as its __call__ passes it by default."""
    with torch.no_grad():
        if family == "sd3":
            e, ne, p, np_ = pipe.encode_prompt(prompts, None, None, do_classifier_free_guidance=True)
            return e, None, p, ne, None, np_
        if family == "flux":  # no CFG; a true-CFG negative is the prompt "" encoded alike
            e, p, _ = pipe.encode_prompt(prompts, None)
            ne, np_, _ = pipe.encode_prompt([""] * len(prompts), None)
            return e, None, p, ne, None, np_
        if family == "sdxl":  # no negative prompt: force_zeros_for_empty_prompt zeroes it
            e, ne, p, np_ = pipe.encode_prompt(prompts, do_classifier_free_guidance=True)
            return e, None, p, ne, None, np_
        if family == "sd15":
            e, ne = pipe.encode_prompt(prompts, "cpu", 1, True)
            return e, None, None, ne, None, None
        if family == "sana":
            instruction = inspect.signature(type(pipe).__call__).parameters["complex_human_instruction"].default
            e, m, ne, nm = pipe.encode_prompt(prompts, complex_human_instruction=instruction)
            return e, m, None, ne, nm, None
        e, m, ne, nm = pipe.encode_prompt(prompts, clean_caption=False)  # PixArt
        return e, m, None, ne, nm, None


# ---------------------------------------------------------------------------------------------- loading


@pytest.mark.parametrize("family", FAMILY_LIST)
def test_loads_as_the_familys_denoiser(family, folders, loaded):
    teacher = loaded[family][0]
    network_class, text_dim, pooled_dim, guidance, shape, vae_scale, kind = EXPECTED[family]
    check_teacher(f"diffusers:{folders[family]}")
    net = teacher.denoiser
    assert isinstance(net, DiffusersDenoiser) and type(net.network).__name__ == network_class
    assert (net.conditioning.text_dim, net.conditioning.pooled_dim, net.conditioning.guidance) == (text_dim, pooled_dim,
                                                                                                   guidance)
    assert net.sample_shape == shape and tuple(teacher.architecture["sample_shape"]) == shape
    assert teacher.architecture["vae_scale_factor"] == vae_scale and teacher.architecture["class_name"] == network_class
    assert teacher.architecture["schedule"]["kind"] == kind
    assert teacher.pipeline.pipeline_class == PIPELINE_CLASSES[family] and teacher.pipeline.local
    assert not net.training and not any(p.requires_grad for p in net.parameters())


def test_flux_schnell_takes_no_guidance(tmp_path):
    teacher = load_teacher(f"diffusers:{write_tiny_pipeline('flux', tmp_path / 'schnell', guidance_embeds=False)}")
    assert teacher.denoiser.conditioning.guidance == "none"
    assert teacher.architecture["schedule"] == {"kind": "flow", "num_train_timesteps": 1000, "shift": 1.0}


def test_the_check_reads_json_only_and_refuses_unsupported_pipelines(folders, tmp_path):
    copy = shutil.copytree(folders["sd3"], tmp_path / "sd3")
    for weights in (copy / "transformer").glob("*.safetensors"):
        weights.unlink()  # the check loads nothing, so missing weights pass it
    check_teacher(f"diffusers:{copy}")
    with pytest.raises(UsageError, match="transformer"):
        load_teacher(f"diffusers:{copy}")
    shutil.rmtree(copy / "text_encoder_3")
    with pytest.raises(UsageError, match=r"lacks the text_encoder_3/ folder"):
        check_teacher(f"diffusers:{copy}")
    index = json.loads((copy / "model_index.json").read_text())
    (copy / "model_index.json").write_text(json.dumps({**index, "_class_name": "KandinskyV22Pipeline"}))
    with pytest.raises(UsageError) as info:
        check_teacher(f"diffusers:{copy}")
    message = info.value.message
    assert "'KandinskyV22Pipeline'" in message and "\n" not in message and info.value.exit_code == 2
    assert all(name in message for name in PIPELINE_FAMILIES) and len(PIPELINE_FAMILIES) == 7


# ---------------------------------------------------------------------------------------------- prompts


@pytest.mark.parametrize("family", FAMILY_LIST)
def test_encoder_is_the_pipelines_encode_prompt(family, loaded):
    _, encode, pipe = loaded[family]
    embeds, mask, pooled, _, _, _ = _pipeline_encoding(family, pipe, PROMPTS)
    got = encode(PROMPTS)
    assert got.embeds.dtype == torch.float32 and got.mask.dtype == torch.int64
    assert torch.equal(got.embeds, embeds)
    if mask is None:  # the network takes no mask: every token counts
        assert torch.equal(got.mask, torch.ones(embeds.shape[:2], dtype=torch.int64))
    else:
        assert torch.equal(got.mask, mask.to(torch.int64)) and 0 < int(got.mask[0].sum()) < got.mask.shape[1]
    if pooled is None:
        assert got.pooled is None
    else:
        assert got.pooled.dtype == torch.float32 and torch.equal(got.pooled, pooled)
    assert not torch.equal(got.embeds[0], got.embeds[1])
    assert encode.max_tokens == MAX_TOKENS[family] and f"max_tokens={encode.max_tokens}" in encode.encoder_id


@pytest.mark.parametrize("family", FAMILY_LIST)
def test_null_condition_is_the_pipelines_negative_embedding(family, loaded):
    _, encode, pipe = loaded[family]
    _, _, _, neg, neg_mask, neg_pooled = _pipeline_encoding(family, pipe, PROMPTS[:1])  # batch 1, as the null's
    null = encode.null_condition()
    assert null.embeds.shape[0] == 1 and torch.equal(null.embeds, neg)
    if neg_mask is not None:
        assert torch.equal(null.mask, neg_mask.to(torch.int64))
    if neg_pooled is not None:
        assert torch.equal(null.pooled, neg_pooled)
    if family == "sdxl":
        assert not null.embeds.any() and not null.pooled.any() and "/null=zeros" in encode.encoder_id
    else:
        assert null.embeds.abs().sum() > 0
    if family == "sana":  # no instruction, no selection: not what encode([""]) gives
        assert int(null.mask.sum()) == 1 and not torch.equal(encode([""]).embeds, null.embeds)


def test_encoder_id_covers_every_text_encoder_and_tokenizer(folders, tmp_path):
    copy = shutil.copytree(folders["sd3"], tmp_path / "sd3")
    source = teacher_pipeline(f"diffusers:{copy}")
    before = source.encoder_id()
    assert "text_encoder+text_encoder_2+text_encoder_3" in before
    config = copy / "tokenizer_3" / "tokenizer_config.json"
    config.write_text(config.read_text() + "\n")
    assert source.encoder_id() != before


def test_long_prompts_are_read_to_each_tokenizers_limit_only(loaded):
    encode = loaded["sd3"][1]
    long = "a photo of a cat on the mountain " * 30_000  # ~1 MB
    start = time.monotonic()
    whole = encode([long])
    seconds = time.monotonic() - start
    assert torch.equal(whole.embeds, encode([long[:3000]]).embeds) and torch.equal(whole.pooled, encode([long[:3000]]).pooled)
    assert seconds < 10
    assert encode([]).embeds.shape == (0, 77 + 256, 64) and encode([]).pooled.shape == (0, 48)


# ---------------------------------------------------------------------------------------------- images


@pytest.mark.parametrize("family", FAMILY_LIST)
def test_decoder_is_the_pipelines_vae_and_image_processor(family, loaded):
    teacher, _, pipe = loaded[family]
    channels = teacher.denoiser.sample_shape[0]
    z = torch.randn(3, channels, 8, 8, generator=torch.Generator().manual_seed(1))
    images = teacher.pipeline.decoder(batch_size=2)(z)
    config = pipe.vae.config
    with torch.no_grad():
        x = pipe.vae.decode(z / config.scaling_factor + (config.get("shift_factor") or 0.0), return_dict=False)[0]
    expected = torch.from_numpy((pipe.image_processor.postprocess(x, output_type="np") * 255).round()).permute(0, 3, 1, 2)
    assert images.dtype == torch.uint8 and torch.equal(images, expected.to(torch.uint8))
    assert images.float().std() > 1


@pytest.mark.parametrize("family", ["sd3", "sana", "sd15"])
def test_whole_pipeline_is_the_familys_class(family, loaded):
    teacher, _, _ = loaded[family]
    pipe = teacher.pipeline.pipeline("cpu")
    assert type(pipe).__name__ == PIPELINE_CLASSES[family]
    network = getattr(pipe, teacher.denoiser.backbone.component)
    assert next(network.parameters()).dtype == torch.float32
    for (name, a), b in zip(network.state_dict().items(), teacher.denoiser.network.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


# ---------------------------------------------------------------------------------------------- official names


@pytest.fixture
def empty_hub(tmp_path, monkeypatch):
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "SIMCLI_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path / "hf-home" / "hub"


OFFICIAL = ["pixart-alpha-512", "pixart-sigma-512", "sd35-medium", "flux1-schnell", "flux1-dev", "sana-600m-512",
            "sdxl-base", "sd15"]


def test_official_names_are_known():
    assert list(HUB_TEACHERS) == OFFICIAL and all(name in known_teachers() for name in OFFICIAL)
    assert {entry.pipeline_class for entry in HUB_TEACHERS.values()} == set(PIPELINE_FAMILIES)
    assert HUB_TEACHERS["pixart-sigma-512"].pipeline_repo == "PixArt-alpha/pixart_sigma_sdxlvae_T5_diffusers"
    for name in OFFICIAL:
        check_teacher(name)  # no network, no download


@pytest.mark.parametrize("name", OFFICIAL)
def test_official_name_offline_says_how_to_download(name, empty_hub, tmp_path):
    entry = HUB_TEACHERS[name]
    result = CliRunner().invoke(app, ["sample", "--teacher", name, "--prompt", "a cat", "--n", "1", "--out",
                                      str(tmp_path / "out"), "--device", "cpu"])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "HF_HUB_OFFLINE=1" in lines[0] and str(empty_hub) in lines[0]
    for repo in filter(None, (entry.repo_id, entry.pipeline_repo)):
        assert repo in lines[0] and download_command(repo) in lines[0]
    gated = ("gated" in lines[0], "Hugging Face token" in lines[0], login_command() in lines[0], "HF_TOKEN" in lines[0],
             f"https://huggingface.co/{entry.repo_id}" in lines[0])
    assert gated == (entry.gated,) * 5
    assert not (tmp_path / "out").exists()


def _cache_repo(hub, repo_id: str, folder, parts: list[str], with_index: bool = True):
    """Files of `folder` as the cached snapshot of `repo_id` (refs/main -> a commit folder)."""
    repo = hub / f"models--{repo_id.replace('/', '--')}"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    if with_index:
        shutil.copy(folder / "model_index.json", snapshot)
    for part in parts:
        shutil.copytree(folder / part, snapshot / part)


def test_pixart_sigma_512_comes_from_two_cached_repositories(empty_hub, folders):
    entry = HUB_TEACHERS["pixart-sigma-512"]
    folder = folders["pixart-sigma"]
    with pytest.raises(UsageError, match="PixArt-Sigma-XL-2-512-MS"):
        load_teacher("pixart-sigma-512")
    _cache_repo(empty_hub, entry.pipeline_repo, folder, ["scheduler", "vae", "text_encoder", "tokenizer"])
    _cache_repo(empty_hub, entry.repo_id, folder, ["transformer"], with_index=False)
    teacher = load_teacher("pixart-sigma-512")
    assert teacher.display_name.startswith("PixArt-Sigma") and teacher.pipeline.max_tokens == 300
    assert teacher.denoiser.sample_shape == (4, 8, 8) and teacher.denoiser.conditioning.text_dim == 32
    assert teacher.pipeline.encoder()(["a cat"]).embeds.shape == (1, 300, 32)
    pipe = teacher.pipeline.pipeline()
    assert type(pipe).__name__ == "PixArtSigmaPipeline" and pipe.transformer.config.sample_size == 8

"""The PixArt-alpha teacher: SIM eq. B.14's EDM wrapper of a diffusers transformer, and the diffusers teacher kind.

Everything runs on a tiny random pipeline written into a temporary folder (tests/helpers/tiny_pixart.py); no
network, no download.
"""

from __future__ import annotations

import json
import math
import time

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from diffusers import DDPMScheduler, PixArtAlphaPipeline, PixArtTransformer2DModel  # noqa: E402

from simcli.errors import UsageError  # noqa: E402
from simcli.nets.diffusers_denoiser import (  # noqa: E402
    DiffusersDenoiser,
    build_diffusers_network,
    diffusers_architecture,
)
from simcli.nets.registry import build_network, check_size, meta_network, network_with_weights  # noqa: E402
from simcli.nets.text_condition import TextCondition  # noqa: E402
from simcli.nets.train_schedule import sigma_to_timestep, vp_schedule, vp_sigma_bins  # noqa: E402
from simcli.rundir.snapshots import save_generator  # noqa: E402
from simcli.sampling.generator import load_generator  # noqa: E402
from simcli.store.hub import download_command  # noqa: E402
from simcli.teachers import pipeline_folder  # noqa: E402
from simcli.teachers.pipeline_source import DiffusersPipelineSource  # noqa: E402
from simcli.teachers.registry import check_teacher, describe_teacher_name, load_teacher  # noqa: E402
from tests.helpers.tiny_pixart import TINY_CAPTION_CHANNELS, TINY_MAX_TOKENS, write_tiny_pixart  # noqa: E402

PROMPTS = ["a red cat", "Photo of a dog on the mat", "   "]
SIGMA_0 = 0.010000500037502575  # sqrt(beta_0 / (1 - beta_0)), beta_0 = 1e-4
SIGMA_999 = 157.40728081040757  # float64 closed form of the linear schedule, M = 1000
PAPER_SIGMA_MAX = 156.6155  # the SIM paper's range end: index 999 of a 1001-bin linspace (see test below)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_tiny_pixart(tmp_path_factory.mktemp("tiny-pixart") / "pipeline")


@pytest.fixture(scope="module")
def pipe(folder):
    pipe = PixArtAlphaPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def teacher(folder):
    return load_teacher(f"diffusers:{folder}")


@pytest.fixture(scope="module")
def encode(teacher):
    return teacher.pipeline.encoder()


@pytest.fixture(scope="module")
def cond(encode):
    return encode(PROMPTS[:2])


@pytest.fixture(scope="module")
def null(encode):
    return encode([""])


def latents(n=2, seed=0):
    return torch.randn(n, 4, 8, 8, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------------- (a) the bins


def test_bins_follow_the_closed_form():
    bins = vp_sigma_bins()
    assert bins.dtype == torch.float64 and bins.shape == (1000,)
    assert bins[0].item() == pytest.approx(math.sqrt(1e-4 / (1 - 1e-4)), rel=1e-14)
    assert bins[0].item() == pytest.approx(SIGMA_0, rel=1e-14)
    assert bins[-1].item() == pytest.approx(SIGMA_999, rel=1e-13)
    assert bool((bins.diff() > 0).all())
    alpha_bar, expected = 1.0, []  # the product written out in Python floats
    for t in range(1000):
        alpha_bar *= 1 - (1e-4 + (0.02 - 1e-4) * t / 999)
        expected.append(math.sqrt((1 - alpha_bar) / alpha_bar))
    torch.testing.assert_close(bins, torch.tensor(expected, dtype=torch.float64), rtol=1e-12, atol=0)
    # diffusers' own float32 table of the same schedule (1 - abar loses ~1e-4 relative at t = 0 in float32)
    abar = DDPMScheduler(beta_schedule="linear", beta_start=1e-4, beta_end=0.02).alphas_cumprod.double()
    torch.testing.assert_close(bins, ((1 - abar) / abar).sqrt(), rtol=1e-4, atol=0)


def test_the_papers_sigma_max_is_a_1001_bin_table():
    """156.6155 (SIM paper, B.3) is sigma_999 of linspace over M + 1 = 1001 betas; the transformer's own is 157.4073."""
    assert vp_sigma_bins(1001)[999].item() == pytest.approx(PAPER_SIGMA_MAX, abs=5e-5)
    assert vp_sigma_bins(1000)[999].item() != pytest.approx(PAPER_SIGMA_MAX, abs=0.5)


def test_rounding_to_the_nearest_bin(teacher):
    net, bins = teacher.denoiser, vp_sigma_bins()
    assert (net.sigma_min, net.sigma_max) == (bins[0].item(), bins[-1].item())
    mid = (bins[10] + bins[11]) / 2
    cases = {0.0: 0, 1e-6: 0, SIGMA_0: 0, 1e4: 999, bins[500].item() * (1 + 1e-9): 500,
             mid.item() * (1 - 1e-6): 10, mid.item() * (1 + 1e-6): 11, 2.5: int((bins - 2.5).abs().argmin())}
    sigmas = torch.tensor(list(cases), dtype=torch.float64)
    expected = torch.tensor(list(cases.values()))
    assert torch.equal(sigma_to_timestep(sigmas, bins), expected)
    assert torch.equal(net.round_sigma(sigmas, return_index=True), expected)
    torch.testing.assert_close(net.round_sigma(sigmas), bins[expected])
    assert net.round_sigma(torch.tensor([[2.5]])).shape == (1, 1)
    assert net.round_sigma(torch.tensor(2.5, dtype=torch.float32)).dtype == torch.float32


def test_only_the_timestep_is_rounded(teacher, cond):
    """EDM's iDDPMPrecond: c_in and c_out use the sigma given, the transformer sees the nearest bin's index."""
    net = teacher.denoiser
    sigma = torch.tensor([0.7, 3.3])
    x = latents()
    t = net.round_sigma(sigma, return_index=True)
    with torch.no_grad():
        eps = net.raw_output(x / (1 + sigma[:, None, None, None] ** 2).sqrt(), t, cond)
        expected = x - sigma[:, None, None, None] * eps
        torch.testing.assert_close(net(x, sigma, cond), expected, rtol=1e-6, atol=1e-6)


def test_schedule_checks():
    assert vp_schedule(None)["num_train_timesteps"] == 1000
    for bad, fragment in (({"beta_schedule": "squaredcos_cap_v2"}, "beta_schedule 'squaredcos_cap_v2' is not supported"),
                          ({"prediction_type": "sample"}, "prediction_type 'sample' is not supported"),
                          ({"beta_end": float("nan")}, "beta_end must be a finite number"),
                          ({"trained_betas": [0.1]}, "has trained_betas")):
        with pytest.raises(UsageError, match=fragment):
            vp_schedule(bad)


# ---------------------------------------------------------------------------------------------- (b) the pipeline


@pytest.mark.parametrize("guidance", [1.0, 4.5])
def test_denoiser_is_the_pipelines_x0_prediction(pipe, teacher, cond, null, guidance):
    """PixArtAlphaPipeline.__call__ with one DDPM step at timestep t returns pred_original_sample; D matches it."""
    net = teacher.denoiser
    net.guidance_scale = guidance
    net.set_null_condition(null)
    pipe.scheduler = DDPMScheduler.from_config(pipe.scheduler.config, clip_sample=False)
    x_t = latents()
    report = []
    try:
        for t in (0, 1, 137, 500, 999):
            x0 = pipe(prompt=PROMPTS[:2], negative_prompt="", timesteps=[t], guidance_scale=guidance, latents=x_t.clone(),
                      height=16, width=16, output_type="latent", use_resolution_binning=False, clean_caption=False).images
            sigma = net.sigma_bins[t].float()
            with torch.no_grad():
                d = net(x_t * (1 + sigma**2).sqrt(), sigma, cond)
            diff = (d - x0).abs().max().item()
            report.append(f"t={t} max|x0|={x0.abs().max().item():.4g} max|D-x0|={diff:.3g}")
            assert diff <= 1e-5 * x0.abs().max().item() + 1e-5, report[-1]
    finally:
        net.guidance_scale = 1.0
        net.set_null_condition(None)
    print(f"\nguidance {guidance}: " + "; ".join(report))


def test_one_batched_pass_for_guidance(teacher, cond, null):
    net, calls = teacher.denoiser, []
    hook = net.transformer.register_forward_hook(lambda m, args, kwargs_out=None: calls.append(args[0].shape[0]))
    try:
        net.guidance_scale = 3.0
        net.set_null_condition(null)
        with torch.no_grad():
            guided = net(latents(), 1.5, cond)
            net.guidance_scale = 1.0
            c, u = net(latents(), 1.5, cond), net(latents(), 1.5, None)
    finally:
        hook.remove()
        net.guidance_scale = 1.0
        net.set_null_condition(None)
    assert calls == [4, 2, 2]
    torch.testing.assert_close(guided, u + 3.0 * (c - u), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="set_null_condition"):
        net(latents(), 1.5, None)


def test_float32_out_under_bf16_autocast_and_checkpointing(teacher, cond):
    net = teacher.denoiser
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(latents(), torch.tensor([0.5, 5.0]), cond)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    twin = build_network(teacher.architecture)
    twin.load_state_dict(net.state_dict())
    twin.requires_grad_(True).train()
    x = latents()
    plain = twin(x, 2.0, cond).square().sum()
    plain.backward()
    grads = [p.grad.clone() for p in twin.parameters()]
    twin.zero_grad()
    twin.set_activation_checkpointing(True)
    assert twin.transformer.gradient_checkpointing
    twin(x, 2.0, cond).square().sum().backward()
    for g, p in zip(grads, twin.parameters(), strict=True):
        torch.testing.assert_close(p.grad, g, rtol=1e-4, atol=1e-6)
    twin.set_activation_checkpointing(False)
    assert not twin.transformer.gradient_checkpointing


def test_micro_conditions_of_1024_models(null):
    """use_additional_conditions: resolution and aspect ratio in pixels from the latent size, as the pipeline passes."""
    torch.manual_seed(0)
    transformer = PixArtTransformer2DModel(
        sample_size=8, num_layers=1, patch_size=2, attention_head_dim=8, num_attention_heads=3, caption_channels=32,
        in_channels=4, out_channels=8, cross_attention_dim=24, use_additional_conditions=True).eval()
    with torch.no_grad():
        for p in transformer.parameters():
            p.add_(0.1 * torch.randn_like(p))
    net = DiffusersDenoiser(transformer, {}, vae_scale_factor=8)
    x_t, t = latents(), torch.tensor([300, 300])
    cond = TextCondition(null.embeds.expand(2, -1, -1), null.mask.expand(2, -1))
    with torch.no_grad():
        expected = transformer(x_t, encoder_hidden_states=cond.embeds, encoder_attention_mask=cond.mask, timestep=t,
                               added_cond_kwargs={"resolution": torch.tensor([[64.0, 64.0]] * 2),
                                                  "aspect_ratio": torch.tensor([[1.0]] * 2)}, return_dict=False)[0]
        other = transformer(x_t, encoder_hidden_states=cond.embeds, encoder_attention_mask=cond.mask, timestep=t,
                            added_cond_kwargs={"resolution": torch.tensor([[512.0, 512.0]] * 2),
                                               "aspect_ratio": torch.tensor([[1.0]] * 2)}, return_dict=False)[0]
        eps = net.raw_output(x_t, t, cond)
    torch.testing.assert_close(eps, expected[:, :4])
    assert not torch.allclose(eps, other[:, :4])


# ---------------------------------------------------------------------------------------------- (c) the record


def test_architecture_record_rebuilds_the_network(teacher, cond, tmp_path):
    record = teacher.architecture
    assert record["kind"] == "diffusers" and json.loads(json.dumps(record)) == record
    assert record["class_name"] == "PixArtTransformer2DModel" and record["sample_shape"] == [4, 8, 8]
    assert record["schedule"] == {"kind": "vp", "num_train_timesteps": 1000, "beta_start": 1e-4, "beta_end": 0.02,
                                  "beta_schedule": "linear", "prediction": "epsilon"}
    assert record["config"]["caption_channels"] == TINY_CAPTION_CHANNELS and record["vae_scale_factor"] == 2
    net = teacher.denoiser
    state = net.state_dict()
    assert all(k.startswith("transformer.") for k in state)
    skeleton = meta_network(record, "test")
    assert check_size(skeleton, "test") == sum(t.numel() for t in state.values())
    rebuilt = build_network(record)
    assert isinstance(rebuilt, DiffusersDenoiser) and rebuilt.sample_shape == (4, 8, 8) and rebuilt.conditioning.text_dim == 32
    x, sigma = latents(), torch.tensor([0.3, 12.0])
    with torch.no_grad():
        before = rebuilt(x, sigma, cond)
        rebuilt.load_state_dict(state)
        assert not torch.equal(before, rebuilt(x, sigma, cond))  # the fresh weights were random
        assert torch.equal(rebuilt(x, sigma, cond), net(x, sigma, cond))
    path = tmp_path / "generator-000000.000.safetensors"
    save_generator(path, state, {"architecture": record, "sigma_init": 2.5})
    loaded, meta, _ = load_generator(path)
    assert meta["architecture"] == record
    with torch.no_grad():
        assert torch.equal(loaded(x, sigma, cond), net(x, sigma, cond))
    assert torch.equal(network_with_weights(record, state, "test")(x, sigma, cond), net(x, sigma, cond))


def test_guided_record_and_null_condition_stay_out_of_the_state_dict(teacher, null):
    record = diffusers_architecture(teacher.denoiser.transformer, teacher.denoiser.schedule, guidance_scale=4.5,
                                    vae_scale_factor=2)
    net = build_diffusers_network(record)
    assert net.guidance_scale == 4.5
    keys = set(net.state_dict())
    net.set_null_condition(null)
    assert set(net.state_dict()) == keys and net.null_embeds is not None
    with pytest.raises(ValueError, match="one row"):
        net.set_null_condition(TextCondition.cat([null, null]))


@pytest.mark.parametrize("change", [{"num_layers": 10**6}, {"sample_size": 10**6}])
def test_hostile_pixart_records_are_refused(teacher, change):
    record = json.loads(json.dumps(teacher.architecture))
    record["config"].update(change)
    with pytest.raises(UsageError, match="at most"):
        meta_network(record, "hostile")
    with pytest.raises(UsageError, match="config or schedule is not a mapping"):
        meta_network({"kind": "pixart", "config": "nope"}, "hostile")


# ---------------------------------------------------------------------------------------------- (d) the registry


def test_loads_through_the_registry(teacher, folder, monkeypatch):
    assert teacher.kind == "diffusers" and teacher.display_name == folder.name and teacher.fid_reference is None
    assert not teacher.denoiser.training
    assert not any(p.requires_grad for p in teacher.denoiser.parameters())
    assert isinstance(teacher.pipeline, DiffusersPipelineSource) and teacher.pipeline.local
    assert next(teacher.denoiser.parameters()).dtype == torch.float32
    check_teacher(f"diffusers:{folder}")
    monkeypatch.chdir(folder.parent)
    assert describe_teacher_name(f"diffusers:{folder.name}") == (f"diffusers:{folder.resolve()}", "pixart")
    assert describe_teacher_name("pixart-alpha-512") == ("pixart-alpha-512", "pixart")


def test_check_refuses_folders_that_are_not_pipelines(folder, tmp_path):
    (tmp_path / "transformer").mkdir()
    cases = {
        f"diffusers:{tmp_path}": "no model_index.json",
        f"diffusers:{tmp_path / 'missing'}": "not found",
        "diffusers:": "names no folder",
    }
    for name, words in cases.items():
        with pytest.raises(UsageError, match=words) as info:
            check_teacher(name)
        assert info.value.exit_code == 2 and "\n" not in info.value.message and info.value.hint
    (tmp_path / "model_index.json").write_text("{not json")
    with pytest.raises(UsageError, match="cannot read"):
        check_teacher(f"diffusers:{tmp_path}")
    (tmp_path / "model_index.json").write_text('{"_class_name": "PixArtAlphaPipeline"}')
    with pytest.raises(UsageError, match="config.json"):
        load_teacher(f"diffusers:{tmp_path}")


def test_missing_packages_name_the_extra(monkeypatch):
    import importlib.util
    import sys

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "diffusers" else real(name, *a))
    with pytest.raises(UsageError, match=r"pip install 'simcli\[t2i\]'"):
        check_teacher("pixart-alpha-512")
    monkeypatch.setattr(importlib.util, "find_spec", real)
    monkeypatch.setitem(sys.modules, "diffusers", None)
    with pytest.raises(UsageError, match=r"pip install 'simcli\[t2i\]'"):
        build_diffusers_network({"kind": "pixart", "config": {}})


# ---------------------------------------------------------------------------------------------- (e) offline


@pytest.fixture
def empty_hub(tmp_path, monkeypatch):
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "SIMCLI_OFFLINE",
                "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_HUB_ETAG_TIMEOUT", "2")
    monkeypatch.setenv("HF_HUB_DOWNLOAD_TIMEOUT", "2")
    return tmp_path / "hf-home" / "hub"


def _refusal(name: str, match: str) -> tuple[UsageError, float]:
    start = time.monotonic()
    with pytest.raises(UsageError, match=match) as info:
        load_teacher(name)
    return info.value, time.monotonic() - start


def test_offline_official_name_says_how_to_download(empty_hub, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    error, seconds = _refusal("pixart-alpha-512", "HF_HUB_OFFLINE=1")
    assert seconds < 10
    assert "PixArt-alpha/PixArt-XL-2-512x512" in error.message and str(empty_hub) in error.message
    assert download_command("PixArt-alpha/PixArt-XL-2-512x512") in error.message
    assert "HF_HUB_OFFLINE=1" in error.message and "\n" not in error.message and error.exit_code == 2
    assert "HF_HOME" in error.message + error.hint


def test_unreachable_hub_fails_fast(empty_hub, monkeypatch):
    """Not offline, but the Hub does not answer (here: a closed local port): one line, no long wait."""
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    error, seconds = _refusal("pixart-alpha-512", "unreachable")
    assert seconds < 10
    assert "PixArt-alpha/PixArt-XL-2-512x512" in error.message and "unreachable" in error.message
    assert download_command("PixArt-alpha/PixArt-XL-2-512x512") in error.message and "\n" not in error.message


def _fake_hub_cache(hub, folder, parts):
    """The tiny pipeline's files `parts` as a cached snapshot of the official repo (refs/main -> a commit folder)."""
    import shutil

    repo = hub / "models--PixArt-alpha--PixArt-XL-2-512x512"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    shutil.copy(folder / "model_index.json", snapshot)
    for part in parts:
        shutil.copytree(folder / part, snapshot / part)
    return snapshot


def test_cached_official_name_loads_offline(empty_hub, folder, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    snapshot = _fake_hub_cache(empty_hub, folder, ["transformer", "scheduler", "vae"])
    teacher = load_teacher("pixart-alpha-512")
    assert teacher.display_name.startswith("PixArt-alpha") and not teacher.pipeline.local
    assert teacher.pipeline.location == "PixArt-alpha/PixArt-XL-2-512x512"
    assert teacher.architecture["vae_scale_factor"] == 2 and teacher.denoiser.sample_shape == (4, 8, 8)
    assert teacher.pipeline.decoder()(latents(1)).shape == (1, 3, 16, 16)
    with pytest.raises(UsageError, match="hf download|huggingface-cli download") as info:  # no text encoder cached
        teacher.pipeline.encoder()
    assert "\n" not in info.value.message
    assert str(snapshot).startswith(str(empty_hub))


def test_download_command_matches_the_installed_cli():
    import shutil
    import sys
    from pathlib import Path

    command = download_command("PixArt-alpha/PixArt-XL-2-512x512", revision="abc")
    assert command.endswith("download PixArt-alpha/PixArt-XL-2-512x512 --revision abc")
    cli = command.split()[0]
    assert shutil.which(cli) or (Path(sys.executable).parent / cli).exists()


# ---------------------------------------------------------------------------------------------- (f) encoder, decoder


def test_encoder_matches_encode_prompt(pipe, encode):
    assert encode.max_tokens == TINY_MAX_TOKENS and "max_tokens=120" in encode.encoder_id
    with torch.no_grad():
        embeds, mask, neg_embeds, neg_mask = pipe.encode_prompt(PROMPTS, do_classifier_free_guidance=True,
                                                                negative_prompt="", clean_caption=False,
                                                                max_sequence_length=TINY_MAX_TOKENS)
    got, empty = encode(PROMPTS), encode([""])
    assert isinstance(got, TextCondition)
    assert got.embeds.shape == (3, TINY_MAX_TOKENS, TINY_CAPTION_CHANNELS) and got.embeds.dtype == torch.float32
    assert set(got.mask.unique().tolist()) <= {0, 1} and got.mask.shape == (3, TINY_MAX_TOKENS)
    torch.testing.assert_close(got.embeds, embeds)
    assert torch.equal(got.mask, mask)
    torch.testing.assert_close(empty.embeds, neg_embeds[:1])
    assert torch.equal(empty.mask, neg_mask[:1]) and empty.mask.sum() == 1  # the empty prompt is </s> alone
    assert encode([]).embeds.shape == (0, TINY_MAX_TOKENS, TINY_CAPTION_CHANNELS)


def test_encoder_id_follows_the_weights(teacher, folder):
    again = teacher.pipeline.encoder()
    assert again.encoder_id == teacher.pipeline.encoder().encoder_id
    assert pipeline_folder.folder_fingerprint([folder / "text_encoder"]) != \
        pipeline_folder.folder_fingerprint([folder / "vae"])


def test_sentencepiece_tokenizer_needs_its_packages(folder, tmp_path):
    """A tokenizer shipped as spiece.model alone (as T5 checkpoints often are) needs sentencepiece and protobuf."""
    import importlib.util
    import shutil

    spm = pytest.importorskip("sentencepiece")
    copy = shutil.copytree(folder, tmp_path / "pipeline")
    shutil.rmtree(copy / "tokenizer")
    (copy / "tokenizer").mkdir()
    (tmp_path / "text.txt").write_text("\n".join(["a photo of a cat on the mat", "a red dog in the park"] * 20))
    spm.SentencePieceTrainer.train(input=str(tmp_path / "text.txt"), model_prefix=str(copy / "tokenizer" / "spiece"),
                                   vocab_size=20, model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1)
    (copy / "tokenizer" / "spiece.vocab").unlink()
    (copy / "tokenizer" / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "T5Tokenizer", "extra_ids": 0}))
    source = DiffusersPipelineSource(str(copy), local=True)
    try:
        has_protobuf = importlib.util.find_spec("google.protobuf") is not None
    except ImportError:
        has_protobuf = False
    if has_protobuf:
        assert source.encoder()(["a cat"]).embeds.shape == (1, TINY_MAX_TOKENS, TINY_CAPTION_CHANNELS)
    else:
        with pytest.raises(UsageError, match=r"protobuf package\(s\): pip install 'simcli\[t2i\]'"):
            source.encoder()


def test_decoder_gives_uint8_images(pipe, teacher):
    decode = teacher.pipeline.decoder(batch_size=2)
    z = latents(3, seed=5)
    images = decode(z)
    assert images.dtype == torch.uint8 and images.shape == (3, 3, 16, 16)
    with torch.no_grad():
        ref = pipe.vae.decode(z / pipe.vae.config.scaling_factor, return_dict=False)[0]
    ref = pipe.image_processor.postprocess(ref, output_type="pt")  # [0, 1]
    assert (images.float() - ref.mul(255)).abs().max() <= 1.0
    assert images.float().std() > 1


def test_full_pipeline_from_the_source(teacher):
    pipeline = teacher.pipeline.pipeline("cpu")
    assert isinstance(pipeline, PixArtAlphaPipeline)
    assert pipeline.transformer.config.sample_size == 8

"""Each diffusers family's EDM wrapper (simcli.nets.diffusers_denoiser) equals the family's own x0-prediction.

The reference never goes through simcli: one real pipeline call (2 steps, guided where the family guides) is
recorded with a forward pre-hook on the network, and the network is called again with those arguments, other
latents and another timestep; its output is turned into x0 with the schedulers' formulas (flow x0 = x_t - t u;
VP eps x0 = (x_t - sqrt(1-abar) eps) / sqrt(abar); VP v x0 = sqrt(abar) x_t - sqrt(1-abar) v). The wrapper is fed
the same sample in VE form, x = x_t / c_in, at sigma = sqrt((1-abar)/abar) (VP bin) or t / (1-t) (flow).
Tiny random pipelines of every family (tests/helpers/tiny_pipelines.py, tiny_pixart.py), float32 on the CPU.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from diffusers import DiffusionPipeline, FlowMatchEulerDiscreteScheduler  # noqa: E402

from simcli.nets.diffusers_denoiser import (  # noqa: E402
    DiffusersDenoiser,
    build_diffusers_network,
    diffusers_architecture,
)
from simcli.nets.text_condition import TextCondition  # noqa: E402
from simcli.nets.train_schedule import training_schedule  # noqa: E402
from tests.helpers.tiny_pipelines import LATENT_CHANNELS, TINY_LATENT_SIZE, write_tiny_pipeline  # noqa: E402
from tests.helpers.tiny_pixart import write_tiny_pixart  # noqa: E402

PROMPT = "a photo of a cat"
GUIDANCE = 4.5
VP_BINS = (1, 250, 625, 999)
FLOW_TIMES = (0.05, 0.3, 0.714, 0.95)
RTOL = 1e-5  # max |D - x0| relative to max |x0|; measured differences are ~1e-7
SIGMA_INITS = (2.5, 80.0, 999.0, 1e4)


@dataclass(frozen=True)
class Case:
    """One teacher: the tiny pipeline's family and options, the time its pipeline passes the network for the flow
    time t (None: a VP network, which takes the bin index), the latent size (h, w) it is run at, edits to the
    saved network config (variants the tiny pipelines do not have) and the parameters those edits add (absent from
    the saved weights, so diffusers leaves them uninitialised; drawn here from a seeded generator)."""

    family: str
    options: dict = field(default_factory=dict)
    flow_time: Callable[[Any, Any], Any] | None = None
    size: tuple[int, int] = (TINY_LATENT_SIZE, TINY_LATENT_SIZE)
    config: dict = field(default_factory=dict)
    added: tuple[str, ...] = ()


# StableDiffusion3Pipeline passes 1000 t; FluxPipeline timestep / 1000 = t (the transformer scales by 1000 itself);
# SanaPipeline 1000 t * transformer.config.timestep_scale. Non-square sizes catch swapped heights and widths
# (FLUX's image ids, SDXL's time ids, PixArt-alpha 1024's resolution and aspect ratio).
CASES: dict[str, Case] = {
    "sd3": Case("sd3", flow_time=lambda t, net: 1000 * t),
    "flux-dev": Case("flux", flow_time=lambda t, net: t, size=(8, 16)),
    "flux-schnell": Case("flux", {"guidance_embeds": False}, flow_time=lambda t, net: t),
    "sana": Case("sana", flow_time=lambda t, net: 1000 * t * net.config.timestep_scale),
    "sana-timestep-scale": Case("sana", flow_time=lambda t, net: 1000 * t * net.config.timestep_scale,
                                config={"timestep_scale": 0.5}),
    "sdxl": Case("sdxl", size=(16, 8)),
    "sd15-epsilon": Case("sd15"),
    "sd15-v": Case("sd15", {"prediction_type": "v_prediction"}),
    "pixart-sigma": Case("pixart-sigma"),
    "pixart-alpha": Case("pixart-alpha"),
    "pixart-alpha-1024": Case("pixart-alpha", size=(8, 16),
                              config={"sample_size": 128, "use_additional_conditions": True},
                              added=("adaln_single.emb.resolution_embedder.", "adaln_single.emb.aspect_ratio_embedder.")),
}


def _rows(value: Any, rows: torch.Tensor, batch: int) -> Any:
    """The captured argument restricted to `rows` of its batch (tensors whose first dim is the batch, in dicts too)."""
    if isinstance(value, dict):
        return {key: _rows(item, rows, batch) for key, item in value.items()}
    if torch.is_tensor(value) and value.ndim >= 1 and value.shape[0] == batch:
        return value[rows]
    return value


@dataclass
class Family:
    """A loaded tiny pipeline, its network and its first network call of a guided 2-step generation."""

    name: str
    pipe: Any
    network: torch.nn.Module
    args: tuple
    kwargs: dict

    @property
    def case(self) -> Case:
        return CASES[self.name]

    @property
    def flow_time(self) -> Callable[[Any, Any], Any] | None:
        return self.case.flow_time

    @property
    def batch(self) -> int:
        return (self.args[0] if self.args else self.kwargs["hidden_states"]).shape[0]

    @property
    def cond_row(self) -> int:
        return self.batch - 1  # [uncond; cond] when the pipeline guides, else the one row

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        return (LATENT_CHANNELS.get(self.case.family, 4), *self.case.size)

    def wrapper(self, guidance_scale: float = 1.0) -> DiffusersDenoiser:
        return DiffusersDenoiser(self.network, training_schedule(self.pipe.scheduler.config), guidance_scale,
                                 vae_scale_factor=self.pipe.vae_scale_factor, sample_shape=self.sample_shape)

    def condition(self, row: int) -> TextCondition:
        """The recorded text inputs of one row as a TextCondition (a mask of ones where the pipeline passes none)."""
        embeds = self.kwargs["encoder_hidden_states"][row:row + 1]
        mask = self.kwargs.get("encoder_attention_mask")
        mask = torch.ones(embeds.shape[:2], dtype=torch.int64) if mask is None else mask[row:row + 1]
        pooled = self.kwargs.get("pooled_projections")
        if pooled is None and self.kwargs.get("added_cond_kwargs"):
            pooled = self.kwargs["added_cond_kwargs"].get("text_embeds")
        return TextCondition(embeds, mask, None if pooled is None else pooled[row:row + 1])

    def raw(self, latents: torch.Tensor, time: torch.Tensor, rows: list[int], **overrides: Any) -> torch.Tensor:
        """The network's output for latents [B, C, h, w] at pipeline times [B], called as the pipeline called it,
        with the recorded call's rows `rows` of every batched input (FLUX: packed in, unpacked out)."""
        index = torch.tensor(rows)
        args = [_rows(a, index, self.batch) for a in self.args]
        kwargs = {key: _rows(value, index, self.batch) for key, value in self.kwargs.items()} | overrides
        b, c, h, w = latents.shape
        packed = self.case.family == "flux"
        sample = self.pipe._pack_latents(latents, b, c, h, w) if packed else latents
        time = time.to((args[1] if len(args) > 1 else kwargs["timestep"]).dtype)
        if args:
            args[0] = sample
        else:
            kwargs["hidden_states"] = sample
        if len(args) > 1:
            args[1] = time
        else:
            kwargs["timestep"] = time
        with torch.no_grad():
            out = self.network(*args, **kwargs)[0]
        if packed:
            scale = self.pipe.vae_scale_factor
            out = self.pipe._unpack_latents(out, h * scale, w * scale, scale)
        return out[:, :c] if out.shape[1] == 2 * c else out  # PixArt's learned sigma: keep the eps half


def load_family(name: str, root) -> Family:
    """Write, load (offline) and run the case's tiny pipeline once, recording its first network call."""
    case, folder = CASES[name], root / name
    if case.family == "pixart-alpha":
        write_tiny_pixart(folder)
    else:
        write_tiny_pipeline(case.family, folder, seed=0, **case.options)
    component = "unet" if case.family in ("sdxl", "sd15") else "transformer"
    if case.config:
        config_file = folder / component / "config.json"
        config_file.write_text(json.dumps(json.loads(config_file.read_text()) | case.config))
    pipe = DiffusionPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    network = pipe.components[component]
    generator = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for key, param in network.named_parameters():
            if key.startswith(case.added):
                param.copy_(0.3 * torch.randn(param.shape, generator=generator))
    calls: list[tuple[tuple, dict]] = []
    hook = network.register_forward_pre_hook(lambda _m, a, k: calls.append((a, dict(k))), with_kwargs=True)
    height, width = (n * pipe.vae_scale_factor for n in case.size)
    arguments: dict[str, Any] = {"num_inference_steps": 2, "height": height, "width": width,
                                 "guidance_scale": GUIDANCE, "output_type": "latent",
                                 "generator": torch.Generator().manual_seed(0)}
    if case.family in ("sana", "pixart-sigma", "pixart-alpha"):
        arguments["use_resolution_binning"] = False
    if case.family in ("sd3", "flux", "sana", "pixart-sigma", "pixart-alpha"):
        arguments["max_sequence_length"] = 32
    try:
        pipe(PROMPT, **arguments)
    finally:
        hook.remove()
    args, kwargs = calls[0]
    return Family(name, pipe, network, tuple(args), kwargs)


@pytest.fixture(scope="module")
def offline():
    """HF_HUB_OFFLINE=1 for the module: every pipeline loads from its folder, nothing is fetched."""
    import huggingface_hub.constants

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        patch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
        yield


@pytest.fixture(scope="module")
def families(tmp_path_factory, offline) -> Callable[[str], Family]:
    """The loaded case of a name, loaded once for the module."""
    root, loaded = tmp_path_factory.mktemp("families"), {}

    def family(name: str) -> Family:
        if name not in loaded:
            loaded[name] = load_family(name, root)
        return loaded[name]

    return family


ALL = list(CASES)
CFG = [name for name, case in CASES.items() if case.family != "flux"]  # FLUX: embedded guidance or none
POOLED = ["sd3", "flux-dev", "flux-schnell", "sdxl"]
PIXART = ["pixart-sigma", "pixart-alpha", "pixart-alpha-1024"]


# ------------------------------------------------------------------------------------- reference x0 and inputs


def noise_levels(fam: Family) -> dict[str, torch.Tensor]:
    """The test's noise levels in every form: VE sigma, the wrapper's c_in, the pipeline's network time, and the
    (a, b) of the family's x0 = a x_t + b F (float64)."""
    scheduler = fam.pipe.scheduler
    if fam.flow_time is None:
        abar = torch.cumprod(1 - scheduler.betas.double(), 0)  # as the schedulers compute alphas_cumprod
        j = torch.tensor(VP_BINS)
        a_bar = abar[j]
        sigma = ((1 - a_bar) / a_bar).sqrt()
        if scheduler.config.prediction_type == "v_prediction":
            a, b = a_bar.sqrt(), -(1 - a_bar).sqrt()
        else:
            a, b = 1 / a_bar.sqrt(), -((1 - a_bar) / a_bar).sqrt()
        return {"sigma": sigma, "c_in": a_bar.sqrt(), "time": j, "a": a, "b": b}
    t = torch.tensor(FLOW_TIMES, dtype=torch.float64)
    return {"sigma": t / (1 - t), "c_in": 1 - t, "time": fam.flow_time(t.float(), fam.network),
            "a": torch.ones_like(t), "b": -t}


def column(v: torch.Tensor) -> torch.Tensor:
    return v.reshape(-1, 1, 1, 1)


def latents(fam: Family, batch: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, *fam.sample_shape, generator=torch.Generator().manual_seed(seed))


def compare(denoised: torch.Tensor, x0: torch.Tensor) -> tuple[float, float]:
    """(max |D - x0|, that over max |x0|)."""
    diff = (denoised.double() - x0).abs().max().item()
    return diff, diff / x0.abs().max().item()


def unguided(fam: Family) -> tuple[torch.Tensor, torch.Tensor]:
    """(the wrapper at guidance 1, the family's x0 of the conditional row; FLUX-dev: guidance input 1)."""
    levels, x_t = noise_levels(fam), latents(fam, len(VP_BINS))
    overrides = {"guidance": torch.ones(x_t.shape[0])} if fam.kwargs.get("guidance") is not None else {}
    raw = fam.raw(x_t, levels["time"], [fam.cond_row] * x_t.shape[0], **overrides).double()
    x0 = column(levels["a"]) * x_t.double() + column(levels["b"]) * raw
    x = (x_t.double() / column(levels["c_in"])).float()
    with torch.no_grad():
        denoised = fam.wrapper()(x, levels["sigma"].float(), fam.condition(fam.cond_row))
    return denoised, x0


def guided(fam: Family) -> tuple[torch.Tensor, torch.Tensor]:
    """(the wrapper at guidance w, the pipeline's guided x0: CFG over [uncond; cond] in one pass, or FLUX-dev's
    embedded scale as the recorded call passes it)."""
    levels, x_t = noise_levels(fam), latents(fam, len(VP_BINS))
    n = x_t.shape[0]
    wrapper = fam.wrapper(GUIDANCE)
    if fam.batch == 2:
        raw_u, raw_c = fam.raw(torch.cat([x_t, x_t]), torch.cat([levels["time"]] * 2), [0] * n + [1] * n).chunk(2)
        raw = raw_u.double() + GUIDANCE * (raw_c.double() - raw_u.double())
        wrapper.set_null_condition(fam.condition(0))
    else:
        raw = fam.raw(x_t, levels["time"], [0] * n).double()
    x0 = column(levels["a"]) * x_t.double() + column(levels["b"]) * raw
    x = (x_t.double() / column(levels["c_in"])).float()
    with torch.no_grad():
        denoised = wrapper(x, levels["sigma"].float(), fam.condition(fam.cond_row))
    return denoised, x0


def generator_gaps(fam: Family, sigma_inits=SIGMA_INITS) -> list[float]:
    """max |D(s z; s) - (z - u(z; t=1))| / RMS of that limit, for each s (the flow generator's input)."""
    z = latents(fam, 2, seed=2)
    overrides = {"guidance": torch.ones(2)} if fam.kwargs.get("guidance") is not None else {}
    limit = z.double() - fam.raw(z, fam.flow_time(torch.ones(2), fam.network), [fam.cond_row] * 2, **overrides).double()
    wrapper, condition, gaps = fam.wrapper(), fam.condition(fam.cond_row), []
    for s in sigma_inits:
        with torch.no_grad():
            denoised = wrapper(s * z, torch.full((2,), s), condition)
        gaps.append(((denoised.double() - limit).abs().max() / limit.pow(2).mean().sqrt()).item())
    return gaps


# ---------------------------------------------------------------------------------------------------- tests


@pytest.mark.parametrize("name", ALL)
def test_recorded_call_is_the_family_s(families, name):
    """The recorded call is the pipeline's (batched [uncond; cond] where it guides, embedded w for FLUX-dev), the
    wrapper declares the pipeline's inputs, and the test's time rule reproduces the pipeline's first timestep."""
    fam = families(name)
    conditioning = fam.wrapper().conditioning
    guidance = conditioning.guidance
    assert fam.batch == (2 if name in CFG else 1) and (guidance == "cfg") == (name in CFG)
    pooled = fam.condition(0).pooled
    assert (pooled is None) != (name in POOLED)
    assert conditioning.pooled_dim == (0 if pooled is None else pooled.shape[1])
    assert conditioning.text_dim == fam.condition(0).embeds.shape[2]
    if guidance == "embedded":
        assert fam.kwargs["guidance"].tolist() == [GUIDANCE]  # passed as given; the transformer scales it by 1000
    if fam.name == "flux-schnell":
        assert fam.kwargs["guidance"] is None
    if fam.flow_time is not None:  # Sana's DPM-Solver truncates its timesteps to integers
        captured = (fam.args[1] if len(fam.args) > 1 else fam.kwargs["timestep"]).float()[0].item()
        expected = fam.flow_time(fam.pipe.scheduler.sigmas[0].float(), fam.network).item()
        assert abs(captured - expected) <= 1e-3 * fam.flow_time(torch.tensor(1.0), fam.network).item()


@pytest.mark.parametrize("name", ALL)
def test_wrapper_equals_the_family_x0(families, name):
    fam = families(name)
    diff, rel = compare(*unguided(fam))
    assert rel < RTOL, f"{fam.name}: max |D - x0| = {diff:.3g} ({rel:.3g} relative)"


def test_flux_schnell_takes_no_guidance(families):
    """Neither a guidance scale nor a null condition: FLUX-schnell is not guided at all."""
    fam = families("flux-schnell")
    wrapper = fam.wrapper()
    with pytest.raises(ValueError, match="no guidance"):
        wrapper.set_guidance_scale(GUIDANCE)
    with pytest.raises(ValueError, match="takes no null condition"):
        wrapper.set_null_condition(fam.condition(0))


@pytest.mark.parametrize("name", [name for name in ALL if name != "flux-schnell"])
def test_guided_wrapper_equals_the_pipeline_s_guided_x0(families, name):
    fam = families(name)
    denoised, x0 = guided(fam)
    diff, rel = compare(denoised, x0)
    assert rel < RTOL, f"{fam.name}: max |D_w - x0_w| = {diff:.3g} ({rel:.3g} relative)"
    assert compare(denoised, unguided(fam)[1])[1] > 1e2 * RTOL  # guidance moves x0 far beyond the tolerance


@pytest.mark.parametrize("name", CFG)
def test_null_condition_is_the_unconditional_row(families, name):
    """D(x, sigma, None) is the family's x0 of the recorded unconditional row (CFG families)."""
    fam = families(name)
    levels, x_t = noise_levels(fam), latents(fam, len(VP_BINS))
    raw = fam.raw(x_t, levels["time"], [0] * x_t.shape[0]).double()
    x0 = column(levels["a"]) * x_t.double() + column(levels["b"]) * raw
    wrapper = fam.wrapper(GUIDANCE)
    wrapper.set_null_condition(fam.condition(0))
    with torch.no_grad():
        denoised = wrapper((x_t.double() / column(levels["c_in"])).float(), levels["sigma"].float(), None)
    assert compare(denoised, x0)[1] < RTOL


@pytest.mark.parametrize("name", POOLED)
def test_a_condition_without_the_pooled_embedding_is_refused(families, name):
    """SD3, FLUX and SDXL need the pooled text embedding: a condition without one is a clear error."""
    fam = families(name)
    wrapper, condition, x = fam.wrapper(), fam.condition(fam.cond_row), latents(fam, 1)
    with pytest.raises(ValueError, match="pooled text embedding"):
        wrapper(x, 1.0, TextCondition(condition.embeds, condition.mask))


@pytest.mark.parametrize("name", ALL)
def test_noise_range_and_network_time(families, name):
    """sigma_min/sigma_max and the time the wrapper hands the network, against the scheduler's own numbers."""
    fam = families(name)
    wrapper, levels = fam.wrapper(), noise_levels(fam)
    scheduler = fam.pipe.scheduler
    if fam.flow_time is None:
        abar = torch.cumprod(1 - scheduler.betas.double(), 0)  # float32 alphas_cumprod loses sigma_0 to cancellation
        torch.testing.assert_close(abar.float(), scheduler.alphas_cumprod, rtol=1e-5, atol=0)
        edges = ((1 - abar[[0, -1]]) / abar[[0, -1]]).sqrt()
        assert wrapper.sigma_min == pytest.approx(edges[0].item(), rel=1e-5)
        assert wrapper.sigma_max == pytest.approx(edges[1].item(), rel=1e-5)
        assert wrapper.network_time(levels["sigma"].float()).tolist() == list(VP_BINS)
        assert wrapper.round_sigma(levels["sigma"].float() * 1.0001, return_index=True).tolist() == list(VP_BINS)
        return
    assert wrapper.sigma_max == float("inf")
    if isinstance(scheduler, FlowMatchEulerDiscreteScheduler):  # the smallest time of its training table
        t_min = type(scheduler).from_config(scheduler.config).sigma_min
        assert wrapper.sigma_min == pytest.approx(t_min / (1 - t_min), rel=1e-5)
    else:  # Sana's DPM-Solver flow sigmas at 1000 steps
        scheduler = type(scheduler).from_config(scheduler.config)
        scheduler.set_timesteps(1000)
        t_min = scheduler.sigmas[scheduler.sigmas > 0].min().item()
        assert wrapper.sigma_min == pytest.approx(t_min / (1 - t_min), rel=2e-3)
    expected = fam.flow_time(torch.tensor(FLOW_TIMES), fam.network)
    torch.testing.assert_close(wrapper.network_time(levels["sigma"].float()), expected, rtol=1e-6, atol=0)


@pytest.mark.parametrize("name", ALL)
def test_record_round_trips(families, name):
    """diffusers_architecture -> JSON -> build_diffusers_network rebuilds the same denoiser: same outputs once the
    state_dict is loaded (and different ones before, so the load is what makes them equal)."""
    fam = families(name)
    wrapper = fam.wrapper(1.0 if fam.name == "flux-schnell" else GUIDANCE)
    record = diffusers_architecture(fam.network, wrapper.schedule, wrapper.guidance_scale, fam.pipe.vae_scale_factor,
                                    wrapper.sample_shape)
    assert json.loads(json.dumps(record)) == record
    torch.manual_seed(3)
    rebuilt = build_diffusers_network(json.loads(json.dumps(record)))
    assert type(rebuilt.network) is type(fam.network)
    assert (rebuilt.schedule, rebuilt.sample_shape, rebuilt.guidance_scale, rebuilt.conditioning) == (
        wrapper.schedule, wrapper.sample_shape, wrapper.guidance_scale, wrapper.conditioning)
    assert (rebuilt.sigma_min, rebuilt.sigma_max) == (wrapper.sigma_min, wrapper.sigma_max)
    x, sigma = latents(fam, 2) * 3, torch.tensor([0.5, 3.0])
    condition = fam.condition(fam.cond_row)
    if wrapper.conditioning.guidance == "cfg":
        wrapper.set_null_condition(fam.condition(0))
        rebuilt.set_null_condition(fam.condition(0))
    with torch.no_grad():
        expected, fresh = wrapper(x, sigma, condition), rebuilt(x, sigma, condition)
        assert not torch.allclose(fresh, expected)
        rebuilt.load_state_dict(wrapper.state_dict())
        torch.testing.assert_close(rebuilt(x, sigma, condition), expected, rtol=0, atol=0)


@pytest.mark.parametrize("name", PIXART)
def test_pixart_records_written_before_kind_rebuild(families, name):
    """Records of kind 'pixart' (no class_name, sample_shape or schedule kind) rebuild an epsilon VP denoiser."""
    fam = families(name)
    schedule = {key: fam.pipe.scheduler.config[key] for key in
                ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule")}
    config = {k: v for k, v in dict(fam.network.config).items() if not k.startswith("_")}
    record = json.loads(json.dumps({"kind": "pixart", "config": config, "schedule": schedule,
                                    "guidance_scale": 1.0, "vae_scale_factor": fam.pipe.vae_scale_factor}))
    rebuilt = build_diffusers_network(record)
    assert rebuilt.schedule == {"kind": "vp", **schedule, "prediction": "epsilon"}
    size = fam.network.config.sample_size
    assert rebuilt.sample_shape == (4, size, size)  # the config's
    rebuilt.sample_shape = fam.sample_shape
    rebuilt.load_state_dict(fam.wrapper().state_dict())
    x, condition = latents(fam, 2) * 3, fam.condition(fam.cond_row)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x, 2.5, condition), fam.wrapper()(x, 2.5, condition), rtol=0, atol=0)


@pytest.mark.parametrize("name", ["sd3", "flux-dev"])
def test_flow_generator_input_approaches_the_t1_limit(families, name):
    """D(s z; s) tends to z - u(z; t=1) (SiD-DiT's generator input) as s grows, at first order: the gap shrinks
    with s, (1 + s) gap is the same at s = 999 and 1e4, and it is below 1e-2 of the limit's RMS at s = 1e4.

    On these random networks the gap is ~30/(1 + s): 0.027 (SD3) and 0.035 (FLUX-dev) at s = 999, mostly the
    network time 1000 t = 999 instead of 1000 (their sinusoidal time embeddings are untrained)."""
    fam = families(name)
    gaps = dict(zip(SIGMA_INITS, generator_gaps(fam), strict=True))
    assert all(gaps[a] > gaps[b] for a, b in zip(SIGMA_INITS, SIGMA_INITS[1:], strict=False)), gaps
    assert 999 * gaps[999.0] == pytest.approx(1e4 * gaps[1e4], rel=0.3), gaps
    assert gaps[1e4] < 1e-2, gaps

"""The run spec of `simcli distill`: every setting of a distillation run, strict and documented.

Units are in the names (kimg = thousands of generator images seen). Defaults are the paper's CIFAR-10
settings for SIM (Luo et al. 2024, Table 5 and Appendix B.2); `methods.py` supplies the per-method
defaults of the baselines and `presets.py` the named presets.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

DistanceName = Literal["pseudo-huber", "l2", "l1", "huber", "lp", "exp-lp"]
MethodName = Literal["sim", "sid", "di", "dmd2"]
PrecisionName = Literal["fp32", "tf32", "bf16", "fp16"]
FeatureBackendName = Literal["torch-fidelity", "clean-fid", "digits"]  # simcli.eval.features registers each


SEED_MAX = 2**64 - 1
"""Largest seed: torch.Generator.manual_seed takes 64 bits (the analytic teacher's fit seeds torch with the run seed;
the iteration streams hash it with numpy's SeedSequence, which takes any size)."""


def _not_bool(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("must be a number")
    return value


Int = Annotated[int, BeforeValidator(_not_bool)]
"""An int field: pydantic's lax int (YAML, JSON, TOML and --set integers; 256.0) without bools (`true` would be 1)."""
Float = Annotated[float, BeforeValidator(_not_bool)]
"""A float field: pydantic's lax float ('1e-4', which YAML reads as text) without bools; finite (Strict)."""


class Strict(BaseModel):
    """Base: unknown keys are errors, instances are immutable, field docstrings are the help text. Numbers are finite
    (no inf or nan); Int and Float fields take no bools."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True, validate_default=True,
                              allow_inf_nan=False)


class LognormalNoise(Strict):
    """ln sigma ~ N(p_mean, p_std^2), optionally clipped (EDM; SIM eq. B.6 and B.10)."""

    kind: Literal["lognormal"] = "lognormal"
    p_mean: Float = -1.2
    """Mean of ln sigma."""
    p_std: Float = Field(1.2, gt=0)
    """Standard deviation of ln sigma."""
    sigma_min: Float | None = Field(None, gt=0)
    """Clip sigma below at this value (none by default)."""
    sigma_max: Float | None = Field(None, gt=0)
    """Clip sigma above at this value (none by default)."""


class KarrasUniformNoise(Strict):
    """SiD's generator noise: u ~ U(0, t_max/1000) on the Karras schedule (SiD eq. B.8)."""

    kind: Literal["karras-uniform"] = "karras-uniform"
    t_max: Float = Field(800.0, gt=0, le=1000)
    """Upper end of u in thousandths of the schedule (800 means u ~ U(0, 0.8))."""
    sigma_min: Float = Field(0.002, gt=0)
    """Smallest sigma of the schedule."""
    sigma_max: Float = Field(80.0, gt=0)
    """Largest sigma of the schedule."""
    rho: Float = Field(7.0, gt=0)
    """Schedule curvature."""


class KarrasGridNoise(Strict):
    """DMD2's noise levels: an index uniform in [index_min, index_max] of a grid of `steps` levels on the Karras
    schedule, index 0 the smallest (tianweiy/DMD2 main/edm/edm_guidance.py, `karras_sigmas`)."""

    kind: Literal["karras-grid"] = "karras-grid"
    steps: Int = Field(1000, ge=2, le=1_000_000)
    """Levels of the grid (DMD2's num_train_timesteps, 1000)."""
    index_min: Int = Field(0, ge=0)
    """Smallest index drawn (DMD2's generator: 20, min_step_percent 0.02; its fake score and GAN terms: 0)."""
    index_max: Int | None = Field(None, ge=0)
    """Largest index drawn, inclusive (DMD2's generator: 980, max_step_percent 0.98); none: steps - 1."""
    sigma_min: Float = Field(0.002, gt=0)
    """Smallest sigma of the grid."""
    sigma_max: Float = Field(80.0, gt=0)
    """Largest sigma of the grid."""
    rho: Float = Field(7.0, gt=0)
    """Schedule curvature."""

    @model_validator(mode="after")
    def _indices(self) -> KarrasGridNoise:
        top = self.steps - 1 if self.index_max is None else self.index_max
        if not self.index_min <= top < self.steps:
            raise ValueError(f"the indices must satisfy 0 <= index_min <= index_max < steps ({self.steps}), got "
                             f"{self.index_min} and {top}")
        if self.sigma_min >= self.sigma_max:
            raise ValueError(f"sigma_min ({self.sigma_min:g}) must be below sigma_max ({self.sigma_max:g})")
        return self

    @property
    def top_index(self) -> int:
        """The largest index drawn."""
        return self.steps - 1 if self.index_max is None else self.index_max


NoiseSpec = Annotated[LognormalNoise | KarrasUniformNoise | KarrasGridNoise, Field(discriminator="kind")]


class OptimizerSpec(Strict):
    """Adam settings."""

    lr: Float = Field(1e-5, gt=0)
    """Learning rate."""
    beta1: Float = Field(0.0, ge=0, lt=1)
    """Adam beta1 (0 in SIM and SiD)."""
    beta2: Float = Field(0.999, ge=0, lt=1)
    """Adam beta2."""
    eps: Float = Field(1e-8, gt=0)
    """Adam epsilon."""
    weight_decay: Float = Field(0.0, ge=0, lt=1)
    """Decoupled weight decay (AdamW when above 0; DMD2: 0.01). 0: Adam, as SIM, SiD and Diff-Instruct."""
    warmup_updates: Int = Field(0, ge=0)
    """The learning rate rises linearly over this many updates of the network, from 0 (diffusers'
    constant_with_warmup schedule, as DMD2's); 0: none."""
    max_grad_norm: Float | None = Field(None, gt=0)
    """Scale the gradient down to this total norm when above it (torch's clip_grad_norm_; DMD2: 10); none: never."""


MLP_MAX_LAYERS = 64
"""The most hidden layers: simcli.nets.registry.MAX_BLOCKS, the bound its network files (generator snapshots) are read
with, so a run never writes a generator that `sample` and `eval` refuse (a test keeps the two equal)."""


MAX_GENERATOR_STEPS = 16
"""The most noise levels a generator may have (generator.steps); snapshots recording more are refused."""


class NetworkSpec(Strict):
    """MLP denoiser for vector data (analytic teachers); network teachers (EDM, digits, PixArt) bring their own."""

    hidden_dim: Int = Field(256, gt=0)
    """Width of each hidden layer."""
    num_layers: Int = Field(4, gt=0, le=MLP_MAX_LAYERS)
    """Number of hidden layers (at most 64: simcli reads network files with at most that many)."""
    embedding_dim: Int = Field(32, gt=1)
    """Size of the noise-level embedding (even)."""
    dropout: Float = Field(0.0, ge=0, lt=1)
    """Dropout probability, active while the generator or online model is being updated."""


class TeacherFitSpec(Strict):
    """Regression of the MLP onto an analytic teacher's exact denoiser (data-free, cached in the run directory)."""

    steps: Int = Field(1500, gt=0)
    """Adam steps of the fit."""
    batch_size: Int = Field(512, gt=0)
    """Noisy samples per step."""
    lr: Float = Field(1e-3, gt=0)
    """Peak learning rate (cosine decay to zero)."""
    sigma_min: Float = Field(0.002, gt=0)
    """Smallest noise level fitted (log-uniform between sigma_min and sigma_max)."""
    sigma_max: Float = Field(80.0, gt=0)
    """Largest noise level fitted."""


class LossSpec(Strict):
    """Distillation method and its constants."""

    method: MethodName = "sim"
    """sim (Score Implicit Matching), sid (Score identity Distillation), di (Diff-Instruct) or dmd2 (DMD2: distribution
    matching, its two-time-scale update and, with --data, its GAN term; simcli.distill.dmd2)."""
    distance: DistanceName = "pseudo-huber"
    """SIM distance d (Table 4)."""
    pseudo_huber_c: Float | None = Field(None, gt=0)
    """Pseudo-Huber c in x0 units; none means 0.00054 * sqrt(D) (our documented choice)."""
    huber_delta: Float = Field(1.0, gt=0)
    """Huber threshold delta."""
    lp_alpha: Int = Field(4, ge=2)
    """Exponent of the lp distance (even)."""
    exp_lp_alpha: Int = Field(2, ge=2)
    """Exponent inside the exp-lp distance (even)."""
    exp_lp_beta: Float = Field(1.0, gt=0)
    """Scale beta inside the exp-lp distance."""
    sid_alpha: Float = 1.2
    """SiD's alpha (1.2 in SiD's CIFAR-10 runs; 1.0 matches SIM-l2)."""

    @model_validator(mode="after")
    def _even_exponents(self) -> LossSpec:
        for name in ("lp_alpha", "exp_lp_alpha"):
            if getattr(self, name) % 2:
                raise ValueError(f"{name} must be even, got {getattr(self, name)}")
        return self


class GeneratorSpec(Strict):
    """The one-step generator G(z) = D_theta(sigma_init z; sigma_init) (SIM eq. B.4)."""

    sigma_init: Float = Field(2.5, gt=0)
    """Noise level at which the generator denoises pure noise (2.5 in SIM and SiD; 1.0 for di, as Diff-Instruct's
    README recipe --init_sigma 1.0)."""
    noise: NoiseSpec = LognormalNoise(p_mean=-3.5, p_std=2.5)
    """Noise levels of the generator step (SIM: ln sigma ~ N(-3.5, 2.5^2), eq. B.10)."""
    weighting: Literal["none", "edm"] = "none"
    """Per-noise weight w(sigma) of the generator loss ('none' is the paper's 'nowgt')."""
    optimizer: OptimizerSpec = OptimizerSpec()
    """Adam for the generator."""
    lora_rank: Int | None = Field(None, gt=0, le=65536)
    """Train low-rank adapters (LoRA, rank r) of the generator's linear and convolution weights instead of all its
    weights: the generator then shares the teacher's frozen weights (one copy in memory) and trains, and keeps Adam
    states for, the adapters only (simcli.nets.lora). none: all weights (the paper's setting). --lora-rank sets the
    generator's and the online model's."""
    lora_alpha: Float | None = Field(None, gt=0)
    """LoRA's alpha: the adapters' product is scaled by alpha / rank. none: alpha = rank (scale 1)."""
    lora_snapshots: Literal["adapters", "merged"] = "adapters"
    """What a LoRA generator's snapshots (generator-<kimg>.safetensors) hold: adapters (small; `sample` and `eval`
    load the teacher and add them) or merged (the teacher's weights with the adapters added in: a generator file
    like any other, which needs no teacher). May change on resume."""
    steps: Int = Field(1, ge=1, le=MAX_GENERATOR_STEPS)
    """Noise levels the generator is applied at (--generator-steps K): x0 = G(sigma_1 z; sigma_1), then K - 1 times
    x0 = G(x0 + sigma_k eps; sigma_k) with fresh noise, sigma_1 = sigma_init > sigma_2 > ... (DMD2's multistep
    generator). Trained by backward simulation: each sample trains at a level drawn uniformly, on the input the
    generator's own earlier steps make (simcli.distill.few_step). `sample` and `eval` use the run's K. 1: SIM's
    one-step generator."""
    step_sigmas: list[Float] | None = None
    """The K - 1 noise levels after sigma_init of a K-step generator, descending and below sigma_init; none: the first
    K points of EDM's ramp (rho 7) from sigma_init to 0.002 over K intervals (simcli.nets.few_step.step_sigmas)."""
    uncertainty_scaling: bool = False
    """Divide each sample's generator loss (SIM, SiD or Diff-Instruct; with SiDA's adversarial loss added) by e^u,
    u(sigma) the online model's learned uncertainty at the sample's noisy input, read from the same pass as its
    denoised output (SiDA's EDM2 runs with --return_logvar 1: mingyuanzhou/SiD@a5510fdf
    sida_training_edm2/sida_loss_edm2.py:458-459 for SiD, :276-277 and :283-284 for SiDA's two terms). u is trained
    with online.weighting 'uncertainty'; otherwise it stays the teacher's. Needs an EDM2 teacher; not for dmd2."""
    score_dropout: Literal["off", "shared-mask"] = "off"
    """Dropout of the teacher and the online model in the generator step. off: both in eval mode (SIM; SiD's
    code). shared-mask: both in train mode, the online model's call replaying the random state of the teacher's,
    so both drop the same units (Diff-Instruct's code; the default for di). The generator's own dropout is on."""


    @model_validator(mode="after")
    def _step_levels(self) -> GeneratorSpec:
        if self.step_sigmas is None:
            return self
        levels = [self.sigma_init, *self.step_sigmas]
        if len(self.step_sigmas) != self.steps - 1:
            raise ValueError(f"step_sigmas gives {len(self.step_sigmas)} noise levels after sigma_init; a generator of "
                             f"{self.steps} steps has {self.steps - 1}")
        if any(not 0 < b < a for a, b in zip(levels, levels[1:], strict=False)):
            raise ValueError(f"step_sigmas must fall below sigma_init ({self.sigma_init:g}) and stay positive, got "
                             f"{self.step_sigmas}")
        return self


class OnlineSpec(Strict):
    """The online model D_psi, trained by denoising score matching on generator samples."""

    noise: NoiseSpec = LognormalNoise(p_mean=-1.2, p_std=1.2)
    """Noise levels of the online step (EDM lognormal, eq. B.6)."""
    optimizer: OptimizerSpec = OptimizerSpec()
    """Adam for the online model."""
    weighting: Literal["edm", "none", "uncertainty"] = "edm"
    """Per-noise weight of the DSM loss: edm, lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2 (eq. B.7);
    none, 1 (the paper's text-to-image runs: 'both loss weights 1', Appendix B.3); uncertainty, EDM2's loss
    (lambda(sigma) / e^u) ||D_psi - x0||^2 + C*H*W*u, which also trains the online model's learned uncertainty
    u(sigma) (Karras et al. 2024, eq. 21; SiDA's fake score with --return_logvar 1, mingyuanzhou/SiD@a5510fdf
    sida_training_edm2/sida_loss_edm2.py:493, and :331 beside its discriminator, whose loss it divides by e^u,
    :341-342). Needs a network with that output (EDM2 teachers)."""
    updates_per_generator_update: Int = Field(1, gt=0)
    """Online updates before each generator update (1 in Algorithm 2)."""
    sample_source: Literal["fresh", "generator-step"] = "fresh"
    """Samples the online model is trained on. fresh: new generator samples (G in eval mode), as Algorithm 2.
    generator-step: the samples the generator update just made (G in train mode, detached), one generator forward
    fewer per iteration; the iteration then runs the generator update first and the online update on its samples
    (needs updates_per_generator_update 1). What it saves and what it costs in FID on the digits teacher:
    examples/digits/SPEED-OPTIONS.md; the run warns when it is chosen."""
    lora_rank: Int | None = Field(None, gt=0, le=65536)
    """Train low-rank adapters (LoRA, rank r) of the online model's linear and convolution weights instead of all its
    weights: the online model then shares the teacher's frozen weights (one copy in memory) and trains, and keeps Adam
    states for, the adapters only (simcli.nets.lora). none: all weights (the paper's setting). --lora-rank sets the
    generator's and the online model's."""
    lora_alpha: Float | None = Field(None, gt=0)
    """LoRA's alpha: the adapters' product is scaled by alpha / rank. none: alpha = rank (scale 1)."""
    augment_p: Float = Field(0.0, ge=0, lt=1)
    """Probability p of EDM's augmentation pipeline on the online step's generated images: the augmented image is
    the denoising target and its 9 augment labels go to the online model. Only for networks with augment_dim 9
    (EDM's CIFAR-10, FFHQ and AFHQ teachers); other networks are not augmented and the run warns. 0.12 for sid and
    di (their code); 0 for sim (our choice: the SIM paper does not mention augmentation)."""


    @model_validator(mode="after")
    def _reuse_once(self) -> OnlineSpec:
        if self.sample_source == "generator-step" and self.updates_per_generator_update != 1:
            raise ValueError("sample_source 'generator-step' needs updates_per_generator_update 1 "
                             f"(got {self.updates_per_generator_update}): one generator step makes one batch of samples")
        return self


class EMASpec(Strict):
    """EMA of the generator weights, the weights that sample and eval use."""

    halflife_kimg: Float = Field(500.0, ge=0)
    """Half-life in thousands of images; 0 disables averaging (EMA = current weights)."""
    rampup_ratio: Float | None = Field(0.05, gt=0)
    """Half-life is at most this fraction of the images seen so far; none disables the ramp-up."""


class TrainingSpec(Strict):
    """Batch and duration."""

    batch_size: Int = Field(256, gt=0)
    """Generator images per iteration (also the online step's batch)."""
    batch_gpu: Int | None = Field(None, gt=0)
    """Images per forward pass (--batch-gpu): the micro-batch. The batch_size / batch_gpu micro-batches are shared out
    over the processes (torchrun) and accumulated; each draws its random numbers from its own stream, so a run with
    the same batch_size and batch_gpu gives the same result for any number of processes. none: batch_size divided
    by the number of processes (on resume: the micro-batch the run used, when the processes can share it)."""
    duration_kimg: Float | None = Field(None, gt=0)
    """Stop after this many thousand generator images (exclusive with duration_steps)."""
    duration_steps: Int | None = Field(None, gt=0)
    """Stop after this many iterations (exclusive with duration_kimg)."""
    activation_checkpointing: bool = False
    """Recompute the blocks' activations in the backward pass of the generator, the online model and the teacher
    (EDM UNets and the PixArt transformer; not the MLPs of mixture teachers): less memory, more time
    (benchmarks/bench_distill.py measures both; results in benchmarks/results/)."""
    precision: PrecisionName = "fp32"
    """Network passes: fp32 (TF32 off, as SiD's CIFAR-10 runs), tf32, bf16 (autocast) or fp16 (autocast with dynamic
    loss scaling). Weights, optimiser state, losses and d'(y) stay float32. May change on resume."""
    channels_last: bool = False
    """Keep the image networks' weights in channels-last memory layout (often faster on GPUs with tensor cores). The
    same computation up to rounding, except that dropout masks (drawn in memory order) differ."""
    compile: bool = False
    """torch.compile the generator, the online model and the teacher (the first iterations pay the compilation)."""
    max_nonfinite_steps: Int = Field(10, gt=0)
    """Stop the run (exit code 1) after this many consecutive iterations with non-finite losses or gradients."""
    collective_timeout_min: Float = Field(5.0, gt=0, le=1440)
    """Under torchrun: how long a process may give no sign of life (killed, hung, stopped) while the others wait for
    it in a collective; then rank 0 names it, saves the last finished iteration and stops (exit code 1). Processes
    that are alive but busy (rank 0 writing a snapshot) are waited for. May change on resume."""
    sharding: Literal["none", "fsdp"] = "none"
    """fsdp: under torchrun, shard the generator, the online model and the EMA (parameters, gradients, Adam states)
    and the frozen teacher (parameters) over the processes with torch's FSDP2, block by block; states are written as
    sharded checkpoints (state-<kimg>.dcp/) that resume with any number of processes. The same losses as none, up
    to rounding; one process has nothing to shard over and runs unsharded. May change on resume."""
    offload_teacher: bool = False
    """With sharding fsdp on CUDA: keep the frozen teacher's shards in CPU memory and copy each block's to the GPU
    when it runs (FSDP's CPU offload policy): less GPU memory, more time. May change on resume."""
    dropout: Float | None = Field(None, ge=0, lt=1)
    """Dropout of the generator and the online model, copies of an EDM teacher's network (as SiD's --dropout builds
    them); recorded in their architecture. none: the teacher's own (what its file records). Mixture teachers' MLPs
    take network.dropout."""

    @model_validator(mode="after")
    def _duration_and_rounds(self) -> TrainingSpec:
        if self.duration_kimg is not None and self.duration_steps is not None:
            raise ValueError("give duration_kimg or duration_steps, not both")
        if self.duration_kimg is None and self.duration_steps is None:
            raise ValueError("give a duration: duration_kimg or duration_steps")
        if self.batch_gpu is not None and self.batch_size % self.batch_gpu:
            raise ValueError(f"batch_gpu ({self.batch_gpu}) must divide batch_size ({self.batch_size})")
        return self

    @property
    def total_steps(self) -> int:
        """Iterations the run lasts."""
        if self.duration_steps is not None:
            return self.duration_steps
        return max(1, round(self.duration_kimg * 1000 / self.batch_size))



class LoggingSpec(Strict):
    """How often the run reports and saves."""

    status_every_kimg: Float = Field(10.0, gt=0)
    """Status line and metrics.jsonl record every this many thousand images."""
    heartbeat_every_s: Float | None = Field(30.0, gt=0)
    """A progress line (display only, not in metrics.jsonl) when this many seconds passed without a status line; none: never."""
    eval_every_kimg: Float | None = Field(None, gt=0)
    """Evaluate the EMA generator (FID, IS) every this many thousand images and at the end; none: never."""
    snapshot_every_kimg: Float = Field(500.0, gt=0)
    """Generator snapshot and resumable state every this many thousand images (and at the end)."""
    keep_states: Int = Field(2, gt=0)
    """Resumable state files kept (the newest ones)."""
    keep_generators: Int | None = Field(None, gt=0)
    """Generator snapshots (generator-<kimg>.safetensors) kept, the newest ones; none: all; generator-best is always kept."""
    grid_samples: Int = Field(100, ge=0)
    """Image teachers: samples in the grid PNGs of the EMA generator (at the start and with every snapshot) and of
    the teacher's 18-step Heun sampler (once); a conditional model gets one row per class; 0: no grids."""


class EvaluationSpec(Strict):
    """In-training evaluation of the EMA generator, every logging.eval_every_kimg.

    Image teachers get FID (and IS) against `reference`; analytic teachers get the exact metrics of
    `simcli eval --teacher` instead (mode weights, precision, MMD^2, sliced W2); text-to-image runs refuse it.
    """

    reference: str | None = None
    """FID reference: a name (cifar10-train, ...), a statistics .npz or a folder; none: the teacher's dataset."""
    num_samples: Int = Field(10000, gt=1)
    """Samples per evaluation (the published protocol uses 50000; fewer is faster but biased upwards)."""
    inception_score: bool = True
    """Also compute the Inception Score, where the backend gives class logits (torch-fidelity, digits; not clean-fid)."""
    backend: FeatureBackendName = "torch-fidelity"
    """Feature extractor: torch-fidelity (Inception; FID and IS), clean-fid (Inception; FID only) or digits (the
    digits teacher's classifier, for 8x8 digits)."""
    feature_weights: str | None = None
    """Local Inception weights file for offline use."""
    batch_size: Int = Field(250, gt=0)
    """Images per generator and extractor batch."""
    seed: Int = Field(0, ge=0, le=SEED_MAX)
    """First seed of the evaluation samples (the same seeds at every evaluation)."""


class TextSpec(Strict):
    """Text-to-image teachers: the prompts the run is distilled from (data-free: prompts only) and the teacher's guidance."""

    prompts: str | None = None
    """Prompt file (--prompts): one prompt per line (.txt) or JSON lines with a 'prompt' field (.jsonl)."""
    guidance_scale: Float = Field(4.5, ge=1.0)
    """The teacher's classifier-free guidance scale w: eps_u + w (eps_c - eps_u); the generator and the online model
    see the conditional prompt only. 4.5: PixArt-alpha's pipeline default (the paper does not state its value)."""
    embedding_cache: bool = True
    """Embed every prompt once into an on-disk store (in simcli's cache), so the text encoder is not in memory while
    training; false: keep the text encoder loaded and embed each micro-batch's prompts as it is drawn."""
    encode_batch_size: Int = Field(64, gt=0)
    """Prompts per text-encoder batch when the store is built."""
    resolution: Int | None = Field(None, gt=0, le=8192)
    """Image side in pixels the generator makes (square); None: the teacher pipeline's default (FLUX 1024, SD3 1024,
    SDXL 1024, SD1.5 512, ...)."""


class GuideSpec(Strict):
    """EDM and EDM2 teachers: guidance by a second network (EDM2's autoguidance and classifier-free guidance), the
    teacher's denoiser becoming D_guide + w (D - D_guide) (simcli.nets.guided). Off by default: SiDA's EDM2 runs
    distill the unguided teacher (teacher-families.md section 9)."""

    network: str | None = None
    """--guide: the guide network, an official EDM2 name or file stem (edm2-img512-xs-uncond-2147483-0.045: an
    unconditional network for CFG; a smaller, shorter-trained conditional one for autoguidance) or a local .pkl; it
    must take the teacher's samples (shape and latent space). None: unguided."""
    weight: Float = Field(1.0, ge=1.0, le=100.0)
    """--guidance: the guidance weight w (1: the teacher alone; EDM2's presets use 1.2 to 2.9)."""


class DataSpec(Strict):
    """Real training images (beyond the paper: SIM is data-free; with data, an adversarial term is added)."""

    source: str | None = None
    """--data: an image folder (a dataset.json beside the images gives labels, EDM's dataset_tool layout), an EDM
    dataset .zip, an .npz (images, optional labels) or a shipped set (digits-train, digits-test); checked against the
    teacher (resolution, channels, labels) before the run directory is touched. none: data-free."""


class AdversarialSpec(Strict):
    """The adversarial term on real data, on when data.source is given: SiDA's (Zhou et al., ICLR 2025; official code
    mingyuanzhou/SiD, branch sida, commit a5510fdf). The discriminator is the online model's encoder: the channel
    mean of its last feature map is a logit map (sida_networks.py:152), so it adds no parameters."""

    online_weight: Float = Field(1.0, ge=0)
    """Weight of the discriminator loss lambda(sigma) * (BCE(real, 1) + BCE(fake, 0)) / 2 beside the online model's
    DSM loss, both per sample (SiDA's --lsd 1 beside --ls 1: sida_train.py:133-151, sida_training_loop.py:363-366)."""
    generator_weight: Float = Field(1e-4, ge=0)
    """Weight of the generator's adversarial loss BCE(clamp(logits, +-10), 1) * C*H*W / w(x) beside its SIM, SiD or
    Diff-Instruct loss (per sample, a per-pixel sum): SiDA's --lsg_gan 0.01 over --lsg 100 (sida_training_loop.py:
    403-413; the 0.5/0.5 mix there scales both alike)."""
    generator_freeze_kimg: Float = Field(100.0, ge=0)
    """The generator does not step before this many thousand images: the online model and its discriminator learn
    first (SiDA: 100 kimg, sida_training_loop.py:425-426)."""
    generator_start_kimg: Float = Field(200.0, ge=0)
    """The generator's adversarial loss is added from this many thousand images on (SiDA: 200 kimg,
    sida_training_loop.py:410)."""
    online_grad_clip: Float | None = Field(1.0, gt=0)
    """Clip the online model's gradient values to this bound (SiDA clips the fake score's to 1 when the adversarial
    term is on: sida_training_loop.py:380-381); none: no clipping."""


class RunSpec(Strict):
    """Everything that defines a distillation run; written to config.json and embedded in checkpoints."""

    teacher: str
    """Teacher (--teacher): digits; an official EDM name (edm-cifar10, ...) or a local EDM PATH.pkl; a simcli
    PATH.safetensors; an analytic mixture gmm-ring8, gmm-grid25 or gmm:PATH.json; a text-to-image pipeline
    pixart-alpha-512 or diffusers:PATH. Paths are stored absolute."""
    network: NetworkSpec = NetworkSpec()
    """Architecture of the MLP fitted to an analytic teacher."""
    teacher_fit: TeacherFitSpec = TeacherFitSpec()
    """Fit of that MLP to the analytic teacher."""
    loss: LossSpec = LossSpec()
    """Method and distance."""
    generator: GeneratorSpec = GeneratorSpec()
    """Generator settings."""
    online: OnlineSpec = OnlineSpec()
    """Online model settings."""
    ema: EMASpec = EMASpec()
    """Generator EMA."""
    training: TrainingSpec
    """Batch and duration."""
    logging: LoggingSpec = LoggingSpec()
    """Reporting and checkpoint cadence."""
    evaluation: EvaluationSpec = EvaluationSpec()
    """What in-training evaluation computes."""
    text: TextSpec = TextSpec()
    """Prompts and guidance (text-to-image teachers only)."""
    guide: GuideSpec = GuideSpec()
    """Guidance of an EDM or EDM2 teacher by a second network (off by default)."""
    data: DataSpec = DataSpec()
    """Real training images (none: data-free, the paper's setting)."""
    adversarial: AdversarialSpec = AdversarialSpec()
    """The adversarial term, on with data.source."""
    seed: Int = Field(0, ge=0, le=SEED_MAX)
    """Seed of every random draw (0 to 2^64 - 1); iteration k reseeds from (seed, k), so resumed runs repeat exactly."""
    device: str = "auto"
    """cpu, cuda, cuda:N or auto (cuda when available)."""


# Settings a resumed run may change; anything else must match the run directory's config.json.
RESUMABLE_CHANGES = (
    "training.duration_kimg",
    "training.duration_steps",
    "training.max_nonfinite_steps",
    "training.collective_timeout_min",
    # The micro-batch: a run goes on with the new one (its random streams change from then on; the run warns).
    "training.batch_gpu",
    # How the same computation runs: precision (a float32 master copy is kept), memory layout, compilation.
    "training.precision",
    "training.channels_last",
    "training.compile",
    "training.activation_checkpointing",
    "training.sharding",
    "training.offload_teacher",
    "generator.lora_snapshots",
    # The optimisers' settings: applied to the restored optimisers and logged as a 'spec_change' record (for
    # example a lower learning rate after a run stopped on non-finite losses).
    *(f"{net}.optimizer.{key}" for net in ("generator", "online") for key in ("lr", "beta1", "beta2", "eps")),
    "logging.status_every_kimg",
    "logging.heartbeat_every_s",
    "logging.snapshot_every_kimg",
    "logging.eval_every_kimg",
    "evaluation.reference",
    "evaluation.num_samples",
    "evaluation.inception_score",
    "evaluation.backend",
    "evaluation.feature_weights",
    "evaluation.batch_size",
    "logging.keep_states",
    "logging.keep_generators",
    "device",
    "text.encode_batch_size",
    "text.embedding_cache",
)

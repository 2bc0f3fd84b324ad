"""Set up a text-to-image run: its prompts, their embeddings (a store built once, or a text encoder kept loaded),
the teacher's empty-prompt embedding for classifier-free guidance, and rank 0's grids: one `RunPrompts` object."""

from __future__ import annotations

import gc
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from simcli.config.spec import RunSpec
from simcli.data.embedding_build import BuildStopped, build_embedding_store
from simcli.data.prompts import PromptFile, read_prompt_file
from simcli.data.text_embeddings import EmbeddingStore, embedding_store_key
from simcli.distill.conditions import LivePrompts, StoredPrompts
from simcli.distill.events import EmbeddingProgress, EmbeddingStoreReady, EmbeddingWait, EventHandler, GridSaved
from simcli.distill.state import Progress
from simcli.distill.stop import StopRequest
from simcli.errors import Stopped, UsageError
from simcli.nets.denoiser import Denoiser
from simcli.nets.few_step import generate_steps
from simcli.nets.text_condition import TextCondition
from simcli.rundir.layout import grid_path
from simcli.sampling.images import save_grid
from simcli.sampling.seeds import SeedRNG, seed_noise
from simcli.store.cache import cache_dir
from simcli.teachers.pipeline_source import DiffusersPipelineSource
from simcli.teachers.prompt_encoders import PromptEncoder
from simcli.teachers.registry import Teacher
from simcli.world import World

STORE_DTYPE = torch.bfloat16
"""Embeddings are stored in bfloat16 (half the disk of float32; T5's hidden states are trained in bf16)."""


def read_run_prompts(spec: RunSpec) -> PromptFile | None:
    """The --prompts file, read and checked before the teacher is loaded (a missing or malformed prompt file costs
    no teacher load); None when the spec names none."""
    return None if spec.text.prompts is None else read_prompt_file(spec.text.prompts)


def check_prompts(given: PromptFile | None, teacher: Teacher) -> PromptFile | None:
    """The run's prompt file; a text-to-image teacher without one is refused (before the run directory is touched),
    and prompts given to another teacher too."""
    if not teacher.denoiser.conditioning.takes_text:
        if given is not None:
            raise UsageError(f"--prompts given, but teacher '{teacher.display_name}' is not a text-to-image teacher",
                             hint="drop --prompts")
        return None
    if given is None:
        raise UsageError(f"teacher '{teacher.display_name}' is a text-to-image teacher and needs prompts",
                         hint="pass --prompts FILE (one prompt per line, or JSON lines with a 'prompt' field)")
    return given


def store_directory(prompts_sha256: str, encoder_id: str, max_tokens: int) -> Path:
    """Where the embeddings of a prompt file are stored: simcli's cache, keyed by the file's bytes, the encoder,
    the token limit and the dtype (any run with the same prompts and encoder reuses them)."""
    return cache_dir() / "text-embeddings" / embedding_store_key(prompts_sha256, encoder_id, max_tokens, "bfloat16")


class LazyEncoder:
    """A prompt encoder made at its first use: a build that waits for another process's, or that finds the store complete
    once it has waited, never loads the text encoder."""

    def __init__(self, make: Callable[[], PromptEncoder]):
        self.make, self.made = make, None

    def _encoder(self) -> PromptEncoder:
        if self.made is None:
            self.made = self.make()
        return self.made

    def encode(self, prompts: list[str]) -> TextCondition:
        return self._encoder()(prompts)

    def null_condition(self) -> TextCondition:
        """The pipeline's own empty-prompt condition (SDXL: zeros; SANA: without its instruction prefix)."""
        return self._encoder().null_condition()


def stopped_build(stop: StopRequest, stopped: BuildStopped) -> Stopped:
    """Stopped, with one line: how many prompts the store holds and that the same command goes on from there."""
    held = f"{stopped.stored:,} of {stopped.total:,} prompts"
    if stopped.holder is not None:
        what = (f"while waiting for {stopped.holder} to build the embedding store {stopped.directory} ({held} stored "
                "so far); this process wrote nothing")
    else:
        what = f"while embedding the prompts: {held} are stored in {stopped.directory}"
    return Stopped(f"stopped by {stop.name} {what}; run the same command again to finish the store (from where it "
                   "stands) and start the run", stop.exit_code)


def _stored_prompts(spec: RunSpec, prompts: list[str], sha256: str, source: DiffusersPipelineSource, world: World,
                    device: torch.device, dtype: torch.dtype | None, on_event: EventHandler,
                    stop: StopRequest | None) -> StoredPrompts:
    """The embedding store of the prompt file: rank 0 finds it in the cache, or builds (or finishes) it, before the
    other processes open it; the text encoder is freed once the store is built. A stop request ends the build (or
    the wait for another process's) at the next encoder batch, keeping what is encoded: Stopped. Rank 0 reports
    the store's size once it is built or found (EmbeddingStoreReady)."""
    directory = store_directory(sha256, source.encoder_id(), source.max_tokens)
    stop = stop if stop is not None else StopRequest()

    def build() -> EmbeddingStore:
        try:
            return EmbeddingStore.open(directory)
        except UsageError:
            pass  # not built yet (or left incomplete): build (or finish) it
        encoder = LazyEncoder(lambda: source.encoder(device, dtype, spec.text.encode_batch_size))
        activity = getattr(stop, "activity", None)  # what a Ctrl-C's acknowledgement says the stop waits for
        stop.activity = "batch of prompts"

        def on_wait(holder: str, stored: int, total: int, waited: float) -> None:
            stop.activity = "wait for the other process's build"
            on_event(EmbeddingWait(str(directory), holder, stored, total, round(waited, 1)))

        def on_progress(done: int, total: int) -> None:
            stop.activity = "batch of prompts"
            on_event(EmbeddingProgress(done, total, str(directory)))

        try:
            return build_embedding_store(
                directory, prompts, encoder.encode, encode_null=encoder.null_condition,
                batch_size=spec.text.encode_batch_size, dtype=STORE_DTYPE,
                on_progress=on_progress, should_stop=lambda: stop.requested, on_wait=on_wait,
            )
        except BuildStopped as stopped:
            raise stopped_build(stop, stopped) from None
        finally:
            stop.activity = activity
            del encoder
            gc.collect()

    store = world.main_first(lambda: build() if world.is_main else EmbeddingStore.open(directory))
    if len(store) != len(prompts):
        raise UsageError(f"the embedding store {directory} holds {len(store)} prompts, the prompt file {len(prompts)}",
                         hint="delete the store to rebuild it")
    if world.is_main:
        on_event(store_ready(store))
    return StoredPrompts(store)


def store_ready(store: EmbeddingStore) -> EmbeddingStoreReady:
    """The event that reports a store's size: in all, per prompt on average, and per prompt at most."""
    return EmbeddingStoreReady(str(store.directory), len(store), store.payload_bytes, store.bytes_per_prompt,
                               store.max_tokens, store.dim, store.pooled_dim, store.element_bytes,
                               store.max_bytes_per_prompt)


@dataclass
class RunPrompts:
    """A text-to-image run's prompts: where each micro-batch's conditions are drawn from, the empty prompt's condition
    (with its pooled row where the encoder gives one) that the teacher's guidance contrasts with, the prompt file's
    sha256, and the pipeline that decodes grids."""

    conditions: StoredPrompts | LivePrompts
    null: TextCondition
    sha256: str
    pipeline: DiffusersPipelineSource

    @staticmethod
    def prepare(spec: RunSpec, teacher: Teacher, world: World, device: torch.device, on_event: EventHandler,
                stop: StopRequest | None = None, given: PromptFile | None = None) -> RunPrompts | None:
        """The run's prompts, embedded (before the run directory is touched); None for a teacher that takes no prompts.

        With text.embedding_cache the prompts' embeddings come from a store in simcli's cache (built once; `stop`
        ends its build at the next encoder batch, keeping what is encoded, with simcli.errors.Stopped); without
        it, every process keeps its text encoder and embeds prompts as they are drawn. A text-to-image teacher without
        a readable prompt file, and prompts given to another teacher, are refused. `given`: the prompt file as
        read_run_prompts read it (read here when not given)."""
        prompt_file = check_prompts(given if given is not None else read_run_prompts(spec), teacher)
        if prompt_file is None:
            return None
        prompts, sha256, source = prompt_file.prompts, prompt_file.sha256, teacher.pipeline
        dtype = torch.bfloat16 if device.type == "cuda" else None  # the store keeps bfloat16 anyway
        if spec.text.embedding_cache:
            conditions = _stored_prompts(spec, prompts, sha256, source, world, device, dtype, on_event, stop)
            return RunPrompts(conditions, TextCondition(*conditions.store.null()), sha256, source)
        encode = source.encoder(device, dtype, spec.text.encode_batch_size)
        null = encode.null_condition()
        return RunPrompts(LivePrompts(prompts, encode), null.to(null.embeds.device, torch.float32), sha256, source)

    def attach(self, teacher: Denoiser, progress: Progress, spec: RunSpec, device: torch.device) -> list[str]:
        """Give the teacher its empty-prompt condition and the run's progress the prompt file's sha256; returns a
        warning when the prompt file changed since the state the run resumes from."""
        if teacher.conditioning.guidance == "cfg":  # FLUX: guidance embedded (dev) or none (schnell)
            teacher.set_null_condition(self.null.to(device))
        before, progress.prompts_sha256 = progress.prompts_sha256, self.sha256
        if before is None or before == self.sha256:
            return []
        return [f"the prompt file {spec.text.prompts} changed since the run's last state "
                f"(sha256 {before[:12]} -> {self.sha256[:12]}): the run goes on with the new prompts"]

    def grids(self, run_dir: Path, n: int, sigmas: tuple[float, ...], device: torch.device,
              on_event: EventHandler) -> TextGrid:
        return TextGrid(run_dir, self.conditions, self.pipeline, n, sigmas, device, on_event)


class TextGrid:
    """Rank 0's grid of the EMA generator on the run's first prompts (cycled), the same seeds every time, decoded
    by the pipeline's VAE (loaded at the first grid); nothing when n is 0."""

    def __init__(self, run_dir: Path, conditions: StoredPrompts | LivePrompts, pipeline: DiffusersPipelineSource, n: int,
                 sigmas: tuple[float, ...], device: torch.device, on_event: EventHandler):
        self.run_dir, self.conditions, self.pipeline, self.n = run_dir, conditions, pipeline, n
        self.sigmas, self.device, self.on_event = sigmas, device, on_event
        self.decode = None

    def needs_teacher(self) -> bool:
        return False  # the teacher draws no grid in text-to-image runs

    def write(self, ema: nn.Module, images_seen: int) -> None:
        if self.n == 0:
            return
        if self.decode is None:
            self.decode = self.pipeline.decoder(self.device)
        condition = self.conditions.rows([i % len(self.conditions) for i in range(self.n)], self.device)
        rng = SeedRNG(range(self.n))
        z = rng.randn(tuple(ema.sample_shape)).to(self.device)
        with torch.no_grad():
            latents = generate_steps(ema, z, self.sigmas, condition, seed_noise(rng, self.device))
            images = self.decode(latents).cpu().numpy()
        path = save_grid(images.transpose(0, 2, 3, 1), grid_path(self.run_dir, images_seen),
                         columns=math.ceil(math.sqrt(self.n)))
        self.on_event(GridSaved(path, f"the EMA generator at {images_seen / 1000:g} kimg on the first {self.n} prompts, "
                                      f"{len(self.sigmas)} NFE"))

"""Set up a text-to-image run: its prompts, their embeddings (a store built once, or a text encoder kept loaded),
and the teacher's empty-prompt embedding for classifier-free guidance."""

from __future__ import annotations

import gc
import math
from pathlib import Path

import torch

from simcli.config.spec import RunSpec
from simcli.data.prompts import prompts_digest, read_prompts
from simcli.data.text_embeddings import EmbeddingStore, build_embedding_store, embedding_store_key
from simcli.distill.conditions import Conditions, LivePrompts, StoredPrompts
from simcli.distill.events import EmbeddingProgress, EventHandler
from simcli.errors import UsageError
from simcli.nets.text_condition import TextCondition
from simcli.teachers.cache import cache_dir
from simcli.teachers.registry import Teacher
from simcli.world import World

STORE_DTYPE = torch.bfloat16
"""Embeddings are stored in bfloat16 (half the disk of float32; T5's hidden states are trained in bf16)."""


def is_text_teacher(teacher: Teacher) -> bool:
    """Whether the teacher is conditioned on prompts."""
    return getattr(teacher.denoiser, "text_dim", 0) > 0


def check_prompts(spec: RunSpec, teacher: Teacher) -> list[str]:
    """The run's prompts; a text-to-image teacher without a readable prompt file is refused (before the run
    directory is touched), and prompts given to another teacher too."""
    if not is_text_teacher(teacher):
        if spec.text.prompts is not None:
            raise UsageError(f"--prompts given, but teacher '{teacher.display_name}' is not a text-to-image teacher",
                             hint="drop --prompts")
        return []
    if spec.text.prompts is None:
        raise UsageError(f"teacher '{teacher.display_name}' is a text-to-image teacher and needs prompts",
                         hint="pass --prompts FILE (one prompt per line, or JSON lines with a 'prompt' field)")
    return read_prompts(Path(spec.text.prompts))


def store_directory(prompts_sha256: str, encoder_id: str, max_tokens: int) -> Path:
    """Where the embeddings of a prompt file are stored: simcli's cache, keyed by the file's bytes, the encoder,
    the token limit and the dtype (any run with the same prompts and encoder reuses them)."""
    return cache_dir() / "text-embeddings" / embedding_store_key(prompts_sha256, encoder_id, max_tokens, "bfloat16")


def prepare_prompts(
    spec: RunSpec, teacher: Teacher, world: World, device: torch.device, on_event: EventHandler
) -> tuple[Conditions, TextCondition, dict[str, object]]:
    """(where prompts are drawn from, the empty prompt's embedding, what the run records of its prompts: their
    count and the sha256 of the prompt file).

    With text.embedding_cache, rank 0 builds the store (or finds it in the cache) before the others open it, and
    the text encoder is freed before training starts; without it, every process keeps its text encoder."""
    prompts = check_prompts(spec, teacher)
    facts = {"prompts": len(prompts), "prompts_sha256": prompts_digest(Path(spec.text.prompts))}
    source = teacher.pipeline
    # The encoder on the run's device; in bfloat16 on GPUs (the store keeps bfloat16 anyway).
    dtype = torch.bfloat16 if device.type == "cuda" else None
    if not spec.text.embedding_cache:
        encode = source.encoder(device, dtype, spec.text.encode_batch_size)
        null = encode([""])
        return LivePrompts(prompts, encode), TextCondition(null.embeds.float(), null.mask), facts

    directory = store_directory(facts["prompts_sha256"], source.encoder_id(), source.max_tokens)

    def build() -> EmbeddingStore:
        try:
            return EmbeddingStore.open(directory)
        except UsageError:
            pass  # not built yet (or left incomplete): build (or finish) it
        encode = source.encoder(device, dtype, spec.text.encode_batch_size)
        try:
            return build_embedding_store(
                directory, prompts, encode, batch_size=spec.text.encode_batch_size, dtype=STORE_DTYPE,
                on_progress=lambda done, total: on_event(EmbeddingProgress(done, total, str(directory))),
            )
        finally:
            del encode
            gc.collect()

    store = world.main_first(lambda: build() if world.is_main else EmbeddingStore.open(directory))
    if len(store) != len(prompts):
        raise UsageError(f"the embedding store {directory} holds {len(store)} prompts, the prompt file {len(prompts)}",
                         hint="delete the store to rebuild it")
    embeds, mask = store.null()
    return StoredPrompts(store), TextCondition(embeds.float(), mask), facts


class TextGrid:
    """Rank 0's grid of the EMA generator on the run's first prompts (cycled), the same seeds every time, decoded
    by the pipeline's VAE (loaded at the first grid)."""

    def __init__(self, conditions: StoredPrompts | LivePrompts, source, n: int, device: torch.device):
        self.conditions, self.source, self.n, self.device = conditions, source, n, device
        self.decode = None

    def write(self, path: Path, ema: torch.nn.Module, sigma_init: float) -> Path:
        from simcli.nets.denoiser import generate
        from simcli.sampling.images import save_grid
        from simcli.sampling.seeds import per_seed_randn

        if self.decode is None:
            self.decode = self.source.decoder(self.device)
        condition = self.conditions.rows([i % len(self.conditions) for i in range(self.n)], self.device)
        z = per_seed_randn(list(range(self.n)), tuple(ema.sample_shape), self.device)
        with torch.no_grad():
            images = self.decode(generate(ema, z, sigma_init, condition)).cpu().numpy()
        return save_grid(images.transpose(0, 2, 3, 1), path, columns=math.ceil(math.sqrt(self.n)))

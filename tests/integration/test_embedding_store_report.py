"""A text-to-image run reports its embedding store's size once, when the store is built and when it is found
(issue 17), on the CPU-sized PixArt-alpha pipeline, whose T5 encoder gives no pooled embedding: none is stored,
none reaches the conditions."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytest.importorskip("diffusers")

from simcli.data.prompts import read_prompt_file  # noqa: E402
from simcli.distill.events import EmbeddingStoreReady  # noqa: E402
from simcli.distill.text_setup import RunPrompts, store_directory  # noqa: E402
from simcli.teachers.registry import load_teacher  # noqa: E402
from simcli.world import World  # noqa: E402
from tests.helpers.tiny_pixart import TINY_CAPTION_CHANNELS, TINY_MAX_TOKENS, write_tiny_pixart  # noqa: E402
from tests.integration.test_text_to_image import PROMPTS, spec_for  # noqa: E402

CPU = torch.device("cpu")


def test_the_store_is_reported_once_when_built_and_once_when_found(tmp_path, monkeypatch):
    monkeypatch.setenv("SIMCLI_CACHE", str(tmp_path / "cache"))
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    spec = spec_for(write_tiny_pixart(tmp_path / "pipe"), prompts, 1)
    teacher = load_teacher(spec.teacher)
    for _ in ("built", "found"):
        events: list[object] = []
        run = RunPrompts.prepare(spec, teacher, World(), CPU, events.append)
        (ready,) = [e for e in events if isinstance(e, EmbeddingStoreReady)]
        store = run.conditions.store
        directory = store_directory(read_prompt_file(prompts).sha256, teacher.pipeline.encoder_id(), TINY_MAX_TOKENS)
        tokens = sum(s["tokens"] for s in store.index["shards"])
        by_hand = tokens * TINY_CAPTION_CHANNELS * 2 + (len(PROMPTS) + len(store.index["shards"])) * 8
        assert (ready.store, ready.prompts, ready.total_bytes) == (str(directory), len(PROMPTS), by_hand)
        assert ready.bytes_per_prompt == by_hand / len(PROMPTS) and ready.pooled_dim == 0
        assert ready.max_bytes_per_prompt == TINY_MAX_TOKENS * TINY_CAPTION_CHANNELS * 2
        assert run.null.pooled is None and run.conditions.rows([0, 1], CPU).pooled is None
        assert Path(ready.store).is_dir()

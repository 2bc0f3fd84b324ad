"""The embedding store's size, reported once when a text-to-image run's store is built or found: one line with the
prompts, the bytes in all and per prompt, and what a prompt costs at most (issue 17)."""

from __future__ import annotations

import io

from rich.console import Console

from simcli.cli.output import DistillReporter, embedding_store_line
from simcli.distill.events import EmbeddingStoreReady

PIXART = EmbeddingStoreReady("/cache/text-embeddings/ab12", 1000, 25_800_000, 25_800.0, 120, 4096, 0, 2, 983_040)
SD3 = EmbeddingStoreReady("/c/s", 12_345, 3 << 30, (3 << 30) / 12_345, 333, 4096, 2048, 2, 2_732_032)


def test_the_line_gives_the_store_per_prompt_and_at_most():
    assert embedding_store_line(PIXART) == (
        "embedding store: 1,000 prompts, 24.6 MiB (25.2 KiB per prompt; at most 120 x 4,096 x 2 B = 960.0 KiB) "
        "in /cache/text-embeddings/ab12")
    assert embedding_store_line(SD3) == (
        "embedding store: 12,345 prompts, 3.0 GiB (254.8 KiB per prompt; at most 333 x 4,096 x 2 B + 2,048 x 2 B = "
        "2.6 MiB) in /c/s")


def test_the_reporter_prints_it_once_as_one_line():
    buf = io.StringIO()
    reporter = DistillReporter(console=Console(file=buf, width=80, soft_wrap=True), live=False, timestamps=False)
    reporter(SD3)
    assert buf.getvalue() == embedding_store_line(SD3) + "\n"

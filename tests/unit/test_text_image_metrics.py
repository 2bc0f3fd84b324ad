"""CLIP score and LAION aesthetic score (simcli.eval.text_image, simcli.eval.aesthetic) with tiny random models.

Nothing is downloaded: a tiny transformers CLIP (WordLevel tokenizer built here) is saved with save_pretrained
and loaded through --clip-model; a tiny open_clip model is saved as an open_clip model folder and loaded through
SIMCLI_AESTHETIC_CLIP; the aesthetic head has random weights in the published file's format. Every number is
checked against a hand computation on the same embeddings.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

pytest.importorskip("transformers")
open_clip = pytest.importorskip("open_clip")

from simcli.cli.app import app  # noqa: E402  (after the importorskips above)
from simcli.errors import UsageError  # noqa: E402
from simcli.eval import aesthetic as aes  # noqa: E402
from simcli.eval.text_image import (  # noqa: E402
    evaluate_text_image,
    load_clip_scorer,
    summarize,
)

WORDS = ["<|startoftext|>", "<|endoftext|>", "[UNK]", "a", "photo", "of", "cat", "dog", "red", "blue", "car", "tree"]
PROMPTS = ["a photo of a cat", "red car", "blue tree", "a dog", "a red dog", "cat"]
OPEN_CLIP_CFG = {
    "model_cfg": {
        "embed_dim": 768, "quick_gelu": True,
        "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "patch_size": 8, "head_width": 16},
        "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1},
    },
}


@pytest.fixture(autouse=True)
def _no_network(monkeypatch, tmp_path):
    """Every test runs offline, with empty simcli and Hugging Face caches."""
    monkeypatch.setenv("SIMCLI_CACHE", str(tmp_path / "simcli-cache"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("SIMCLI_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv(aes.BACKBONE_ENV, raising=False)


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory) -> Path:
    """A random CLIPModel (hidden 32, 2 layers, 32x32 images, patch 8) with its processor, saved with save_pretrained."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="<|startoftext|> $A <|endoftext|>", special_tokens=[("<|startoftext|>", 0), ("<|endoftext|>", 1)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|startoftext|>", eos_token="<|endoftext|>",
                                        unk_token="[UNK]", pad_token="<|endoftext|>", model_max_length=16)
    small = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2}
    config = CLIPConfig(
        text_config={**small, "vocab_size": len(WORDS), "max_position_embeddings": 16, "bos_token_id": 0,
                     "eos_token_id": 1, "pad_token_id": 1},
        vision_config={**small, "image_size": 32, "patch_size": 8}, projection_dim=16)
    torch.manual_seed(19)  # a model whose cosines on these images and prompts take both signs (checked below)
    out = tmp_path_factory.mktemp("clip")
    CLIPModel(config).save_pretrained(out)
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def backbone_dir(tmp_path_factory) -> Path:
    """A random open_clip CLIP (768-d embeddings, 2 layers of width 32, 32x32 images) as an open_clip model folder."""
    from open_clip.model import CLIP
    from safetensors.torch import save_file

    out = tmp_path_factory.mktemp("open_clip")
    (out / "open_clip_config.json").write_text(json.dumps(OPEN_CLIP_CFG))
    torch.manual_seed(1)
    state = CLIP(**OPEN_CLIP_CFG["model_cfg"]).state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, out / "open_clip_model.safetensors")
    return out


@pytest.fixture(scope="module")
def head_file(tmp_path_factory) -> Path:
    """Random head weights as the published file stores them: a state dict with keys layers.{0,2,4,6,7}.*."""
    torch.manual_seed(2)
    head = aes.aesthetic_head(768)
    path = tmp_path_factory.mktemp("head") / "head.pth"
    torch.save(head.state_dict(), path)
    return path


def _images(n: int, seed: int = 0, size: tuple[int, int] = (40, 48)) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, *size), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def _npz(path: Path, images: torch.Tensor, prompts: list[str] | None) -> Path:
    arrays = {"images": images.permute(0, 2, 3, 1).numpy()}
    if prompts is not None:
        arrays["prompts"] = np.array(prompts)
    np.savez(path, **arrays)
    return path


def _cli(*args):
    return CliRunner(env={"NO_COLOR": "1", "COLUMNS": "200", "SIMCLI_DEBUG": None}).invoke(app, [str(a) for a in args])


def _one_error_line(result, *fragments: str) -> str:
    assert result.exit_code == 2, (result.exit_code, result.output)
    assert "Traceback" not in result.output and result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("simcli: error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


# ---------------------------------------------------------------------------------------------- CLIP score


def test_clip_score_is_100_times_the_clamped_cosine(clip_dir):
    from transformers import CLIPModel, CLIPProcessor

    images = _images(6)
    scores = load_clip_scorer(clip_dir).scores(images, PROMPTS)
    model, processor = CLIPModel.from_pretrained(clip_dir), CLIPProcessor.from_pretrained(clip_dir)
    with torch.no_grad():
        pixels = processor.image_processor(images=list(images), return_tensors="pt")["pixel_values"]
        tokens = processor.tokenizer(PROMPTS, padding=True, return_tensors="pt")
        e_img = model.get_image_features(pixel_values=pixels).pooler_output
        e_txt = model.get_text_features(**tokens).pooler_output
    cos = torch.nn.functional.cosine_similarity(e_img, e_txt, dim=-1)
    assert (cos > 0).any() and (cos < 0).any(), cos  # both sides of the clamp are exercised
    assert scores.shape == (6,)
    torch.testing.assert_close(scores, 100 * cos.clamp(min=0), rtol=1e-5, atol=1e-4)
    assert (scores >= 0).all()


def test_clip_score_matches_torchmetrics_per_pair(clip_dir):
    """torchmetrics' CLIPScore (with a wrapper: it expects tensors from get_*_features) on one pair at a time."""
    from torchmetrics.multimodal.clip_score import CLIPScore
    from transformers import CLIPModel, CLIPProcessor

    class TensorFeatures(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.inner, self.config = model, model.config

        def get_image_features(self, *args, **kwargs):
            return self.inner.get_image_features(*args, **kwargs).pooler_output

        def get_text_features(self, *args, **kwargs):
            return self.inner.get_text_features(*args, **kwargs).pooler_output

    wrapped = TensorFeatures(CLIPModel.from_pretrained(clip_dir))
    metric = CLIPScore(model_name_or_path=lambda: (wrapped, CLIPProcessor.from_pretrained(clip_dir)))
    images = _images(4, seed=3)
    ours = load_clip_scorer(clip_dir).scores(images, PROMPTS[:4])
    for i in range(4):
        metric.reset()
        metric.update(images[i : i + 1], [PROMPTS[i]])
        assert float(metric.compute()) == pytest.approx(float(ours[i]), rel=1e-5, abs=1e-4)


def test_identical_pairs_score_the_same_in_any_batch(clip_dir):
    scorer = load_clip_scorer(clip_dir)
    x = _images(1, seed=5)
    both = scorer.scores(torch.cat([x, x]), ["a red car", "a red car"])
    alone = scorer.scores(x, ["a red car"])
    assert float(both[0]) == float(both[1])
    assert float(alone[0]) == pytest.approx(float(both[0]), abs=1e-4)


def test_summary_is_mean_std_n():
    assert summarize(torch.tensor([1.0, 2.0, 3.0, 6.0])) == {"mean": 3.0, "std": pytest.approx(np.std([1, 2, 3, 6])),
                                                              "n": 4}


# ---------------------------------------------------------------------------------------------- aesthetic


def _by_hand(state: dict, x: torch.Tensor) -> torch.Tensor:
    for i in (0, 2, 4, 6, 7):  # the linear layers; the dropouts in between do nothing in eval mode
        x = x @ state[f"layers.{i}.weight"].T + state[f"layers.{i}.bias"]
    return x.squeeze(-1)


def test_aesthetic_is_the_head_on_the_normalised_embedding(backbone_dir, head_file):
    images = _images(3, seed=7)
    scores = aes.load_aesthetic_scorer(head_file, backbone=backbone_dir).scores(images)
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{backbone_dir}")
    model.eval()
    with torch.no_grad():
        x = torch.stack([preprocess(Image.fromarray(im.permute(1, 2, 0).numpy())) for im in images])
        emb = model.encode_image(x)
    expected = _by_hand(torch.load(head_file), emb / emb.norm(dim=-1, keepdim=True))
    torch.testing.assert_close(scores, expected, rtol=1e-5, atol=1e-5)


def test_normalisation_leaves_a_zero_embedding_alone():
    out = aes.normalized(torch.tensor([[3.0, 4.0], [0.0, 0.0]]))
    torch.testing.assert_close(out, torch.tensor([[0.6, 0.8], [0.0, 0.0]]))


def test_head_from_a_wrong_file_is_a_usage_error(tmp_path):
    bad = tmp_path / "bad.pth"
    torch.save({"weight": torch.zeros(2)}, bad)
    with pytest.raises(UsageError, match="could not load LAION aesthetic head"):
        aes.load_aesthetic_head(bad)


def test_head_is_downloaded_once_into_the_cache_and_checked(monkeypatch, tmp_path, head_file):
    """simcli's downloader (a file:// URL here): cached under <cache>/weights, then found offline; sha256 checked."""
    data = head_file.read_bytes()
    import hashlib

    monkeypatch.setattr(aes, "AESTHETIC_HEAD_URL", head_file.as_uri())
    monkeypatch.setattr(aes, "AESTHETIC_HEAD_BYTES", len(data))
    monkeypatch.setattr(aes, "AESTHETIC_HEAD_SHA256", hashlib.sha256(data).hexdigest())
    monkeypatch.delenv("SIMCLI_OFFLINE")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    path = aes.aesthetic_head_path()
    assert path == tmp_path / "simcli-cache" / "weights" / aes.AESTHETIC_HEAD_FILE and path.read_bytes() == data
    monkeypatch.setenv("SIMCLI_OFFLINE", "1")
    assert aes.aesthetic_head_path() == path
    monkeypatch.setattr(aes, "AESTHETIC_HEAD_SHA256", "0" * 64)
    with pytest.raises(UsageError, match="is not the published"):
        aes.aesthetic_head_path()


def test_report_names_the_prompt_set(tmp_path, clip_dir, backbone_dir, head_file):
    """Same images, another prompt set: another sha256 and another CLIP score; the aesthetic score is image-only."""
    images = _images(3, seed=19)
    samples = _npz(tmp_path / "s.npz", images, PROMPTS[:3])
    other = tmp_path / "other.txt"
    other.write_text("\n".join(PROMPTS[3:6]) + "\n")
    common = {"metrics": ["clip_score", "aesthetic"], "clip_model": clip_dir, "aesthetic_weights": head_file,
              "aesthetic_backbone": backbone_dir}
    a = evaluate_text_image(samples, **common)
    b = evaluate_text_image(samples, prompts_file=other, **common)
    assert a["prompts"]["source"] != b["prompts"]["source"] and a["prompts"]["sha256"] != b["prompts"]["sha256"]
    assert a["aesthetic"] == b["aesthetic"] and a["clip_score"]["n"] == b["clip_score"]["n"] == 3
    assert a["clip_score"]["mean"] != b["clip_score"]["mean"]
    expected = load_clip_scorer(clip_dir).scores(images, PROMPTS[3:6]).double()
    assert b["clip_score"]["mean"] == pytest.approx(float(expected.mean()), abs=1e-4)
    assert b["clip_score"]["std"] == pytest.approx(float(expected.std(unbiased=False)), abs=1e-4)


# ---------------------------------------------------------------------------------------------- CLI


def test_cli_json_and_human_output(monkeypatch, tmp_path, clip_dir, backbone_dir, head_file):
    monkeypatch.setenv(aes.BACKBONE_ENV, str(backbone_dir))
    images = _images(5, seed=11)
    samples = _npz(tmp_path / "s.npz", images, PROMPTS[:5])
    result = _cli("eval", "--samples", samples, "--clip-score", "--aesthetic", "--clip-model", clip_dir,
                  "--aesthetic-weights", head_file, "--batch-size", 2, "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert {"n", "source", "prompts", "clip_score", "aesthetic"} <= set(doc) and doc["n"] == 5
    assert {"mean", "std", "n"} <= set(doc["clip_score"]) and {"mean", "std", "n"} <= set(doc["aesthetic"])
    assert doc["prompts"]["source"].endswith("'prompts'") and doc["prompts"]["n"] == 5
    assert doc["clip_score"]["mean"] > 0 and doc["clip_score"]["mean"] == pytest.approx(float(load_clip_scorer(clip_dir).scores(images, PROMPTS[:5]).mean()),
                                                      abs=1e-4)
    direct = aes.load_aesthetic_scorer(head_file, backbone=backbone_dir).scores(images)
    assert doc["aesthetic"]["mean"] == pytest.approx(float(direct.double().mean()), abs=1e-5)

    human = _cli("eval", "--samples", samples, "--clip-score", "--aesthetic", "--clip-model", clip_dir,
                 "--aesthetic-weights", head_file)
    assert human.exit_code == 0, human.output
    assert "CLIP score: " in human.stdout and "aesthetic: " in human.stdout and "prompts: " in human.stderr


def test_cli_prompts_file_for_a_folder_and_n(tmp_path, clip_dir):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, im in enumerate(_images(4, seed=13)):
        Image.fromarray(im.permute(1, 2, 0).numpy()).save(folder / f"{i:03d}.png")
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS[:4]))
    full = _cli("eval", "--samples", folder, "--clip-score", "--prompts", prompts, "--clip-model", clip_dir, "--json")
    assert full.exit_code == 0, full.output
    first = _cli("eval", "--samples", folder, "--clip-score", "--prompts", prompts, "--clip-model", clip_dir,
                 "--n", 2, "--json")
    assert first.exit_code == 0, first.output
    assert (json.loads(full.stdout)["clip_score"]["n"], json.loads(first.stdout)["clip_score"]["n"]) == (4, 2)


def test_cli_with_fid_keeps_the_image_report(tmp_path, clip_dir):
    samples = _npz(tmp_path / "d.npz", _images(6, seed=17, size=(8, 8)), PROMPTS)
    result = _cli("eval", "--samples", samples, "--backend", "digits", "--fid", "--ref", "digits-test",
                  "--clip-score", "--clip-model", clip_dir, "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert {"fid", "extractor", "clip_score", "prompts"} <= set(doc) and doc["clip_score"]["n"] == 6


def test_cli_refuses_clip_score_without_prompts(tmp_path, clip_dir):
    samples = _npz(tmp_path / "s.npz", _images(3), None)
    line = _one_error_line(_cli("eval", "--samples", samples, "--clip-score", "--clip-model", clip_dir),
                           "--clip-score needs the samples' prompts", "--prompts FILE")
    assert "hint" in line


@pytest.mark.parametrize(("extra", "fragment"), [
    (("--prompts", "p.txt"), "--prompts given, but no metric uses it"),
    (("--aesthetic-weights", "h.pth"), "--aesthetic-weights given, but --aesthetic is not"),
    (("--clip-score", "--prompts", "p.txt"), "p.txt has 2 prompts but"),
    (("--aesthetic", "--teacher", "gmm-ring8"), "score images, not mixture samples"),
])
def test_cli_bad_text_options(tmp_path, extra, fragment, clip_dir):
    samples = _npz(tmp_path / "s.npz", _images(3), None)
    (tmp_path / "p.txt").write_text("a cat\nred car\n")
    (tmp_path / "h.pth").write_bytes(b"")
    args = [tmp_path / a if a in ("p.txt", "h.pth") else a for a in extra]
    result = (_cli("eval", "--samples", samples, "--clip-model", clip_dir, *args) if "--clip-score" in extra
              else _cli("eval", "--samples", samples, *args))
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr.startswith("simcli: error: ") and fragment in result.stderr
    assert len(result.stderr.splitlines()) == 1 and "Traceback" not in result.output


def test_cli_offline_without_clip_weights_names_the_repo_and_command(tmp_path):
    samples = _npz(tmp_path / "s.npz", _images(2), PROMPTS[:2])
    result = _cli("eval", "--samples", samples, "--clip-score")
    assert result.exit_code == 2 and result.stdout == "" and len(result.stderr.splitlines()) == 1
    for fragment in ("openai/clip-vit-large-patch14", "hf download openai/clip-vit-large-patch14", "HF_HOME",
                     "offline", "--clip-model"):
        assert fragment in result.stderr, fragment


def test_cli_offline_without_aesthetic_files_names_url_path_and_repo(tmp_path, head_file):
    samples = _npz(tmp_path / "s.npz", _images(2), None)
    dest = tmp_path / "simcli-cache" / "weights" / aes.AESTHETIC_HEAD_FILE
    head = _cli("eval", "--samples", samples, "--aesthetic")
    assert head.exit_code == 2 and len(head.stderr.splitlines()) == 1
    assert aes.AESTHETIC_HEAD_URL in head.stderr and str(dest) in head.stderr and "offline" in head.stderr
    assert not dest.exists()  # nothing half-written where the file belongs
    backbone = _cli("eval", "--samples", samples, "--aesthetic", "--aesthetic-weights", head_file)
    assert backbone.exit_code == 2 and len(backbone.stderr.splitlines()) == 1
    for fragment in (aes.BACKBONE_REPO, f"hf download {aes.BACKBONE_REPO}", "HF_HOME", aes.BACKBONE_ENV):
        assert fragment in backbone.stderr, fragment

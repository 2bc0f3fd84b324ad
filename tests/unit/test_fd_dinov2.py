"""FD-DINOv2 as EDM2 computes it: the distance against an independent float64 computation, EDM2's preprocessing
against closed forms, the ViT against transformers' Dinov2Model and a hand-written position-table resize, and the
weights file (missing, wrong, sha256)."""

from __future__ import annotations

import hashlib
import math
import shutil

import numpy as np
import pytest
import scipy.linalg
import torch
from PIL import Image

from simcli.errors import UsageError
from simcli.eval.dinov2 import VITL14, Dinov2Config, Dinov2ViT, config_from_state_dict
from simcli.eval.dinov2_detector import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    get_dinov2_extractor,
    preprocess,
    resize_224,
)
from simcli.eval.dinov2_weights import DINOV2_FILE, DINOV2_URL, load_dinov2
from simcli.eval.fd_dinov2 import Edm2Moments
from simcli.eval.image_eval import evaluate_images
from tests.helpers.tiny_dinov2 import TINY_DINOV2, image_sets, tiny_dinov2, write_tiny_dinov2

N = 80  # images per set: more than the 64 feature dimensions


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    return write_tiny_dinov2(tmp_path_factory.mktemp("dinov2") / "tiny-dinov2.pth")


@pytest.fixture(autouse=True)
def private_dirs(tmp_path, monkeypatch):
    """No real cache is read or written: simcli's cache and torch hub's live in tmp_path, and nothing downloads."""
    monkeypatch.setenv("SIMCLI_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("SIMCLI_OFFLINE", "1")


def nchw(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()


def independent_fd(f1: np.ndarray, f2: np.ndarray, method: str) -> float:
    """|mu1 - mu2|^2 + tr S1 + tr S2 - 2 tr sqrt(S1 S2) with numpy's mean/cov (N - 1) and scipy's linear algebra."""
    mu1, mu2 = f1.mean(axis=0), f2.mean(axis=0)
    s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    if method == "sqrtm":
        tr_sqrt = float(np.trace(scipy.linalg.sqrtm(s1 @ s2)).real)
    else:  # eigenvalues of sqrt(S1) S2 sqrt(S1), sqrt(S1) from scipy's eigh
        w, v = scipy.linalg.eigh(s1)
        root = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
        tr_sqrt = float(np.sqrt(np.clip(scipy.linalg.eigvalsh(root @ s2 @ root), 0, None)).sum())
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt)


# ---------------------------------------------------------------------------------------------- (a) the distance


def test_fd_dinov2_equals_an_independent_float64_computation(tmp_path, tiny_weights):
    a, b = image_sets(N)
    np.savez(tmp_path / "a.npz", images=a)
    np.savez(tmp_path / "b.npz", images=b)
    report = evaluate_images(tmp_path / "a.npz", ref=str(tmp_path / "b.npz"), metrics={"fd_dinov2"},
                             dinov2_weights=tiny_weights, batch_size=32)

    extractor = get_dinov2_extractor(tiny_weights)
    f1 = extractor.features(nchw(a))[0].numpy().astype(np.float64)
    f2 = extractor.features(nchw(b))[0].numpy().astype(np.float64)
    by_eigh, by_sqrtm = independent_fd(f1, f2, "eigh"), independent_fd(f1, f2, "sqrtm")
    rel = abs(report["fd_dinov2"] - by_eigh) / by_eigh
    print(f"FD-DINOv2 {report['fd_dinov2']!r}; independent eigh {by_eigh!r} (rel {rel:.2e}), "
          f"sqrtm {by_sqrtm!r} (rel {abs(report['fd_dinov2'] - by_sqrtm) / by_sqrtm:.2e})")
    assert by_eigh > 1.0  # the two sets differ
    assert rel < 1e-6
    assert abs(report["fd_dinov2"] - by_sqrtm) / by_sqrtm < 1e-6
    assert report["n"] == N
    sha = hashlib.sha256(tiny_weights.read_bytes()).hexdigest()
    assert report["fd_dinov2_weights_sha256"] == report["feature_weights_sha256"] == sha
    assert report["fd_dinov2_extractor"] == report["extractor"] == f"{TINY_DINOV2.arch_name}/edm2-torch-resize"
    assert "backend" not in report  # no Inception network ran


def test_statistics_follow_edm2s_accumulation():
    """sum and x^T x per batch in float64, mu = sum / N, sigma = (sum x^T x - N mu mu^T) / (N - 1)."""
    rng = np.random.default_rng(1)
    features = rng.normal(3.0, 2.0, size=(101, 5)).astype(np.float32)
    moments = Edm2Moments(5)
    for start in range(0, 101, 17):
        moments.add(torch.from_numpy(features[start : start + 17]))
    mu, sigma = moments.mean_cov()
    x = features.astype(np.float64)
    assert moments.n == 101
    np.testing.assert_allclose(mu, x.mean(axis=0), rtol=1e-13)
    np.testing.assert_allclose(sigma, np.cov(x, rowvar=False, ddof=1), rtol=1e-11)
    assert not np.allclose(sigma, np.cov(x, rowvar=False, ddof=0), rtol=1e-4)  # N - 1, not N


def test_statistics_need_two_images():
    moments = Edm2Moments(3)
    moments.add(np.ones((1, 3)))
    with pytest.raises(UsageError, match="at least 2 images"):
        moments.mean_cov()


# ---------------------------------------------------------------------------------------------- (b) preprocessing


@pytest.mark.parametrize("mode", ["torch", "pil"])
@pytest.mark.parametrize("size", [(32, 32), (300, 180)])
def test_constant_image_stays_constant_and_normalises_to_the_closed_form(mode, size):
    colour = (10, 128, 250)
    images = torch.tensor(colour, dtype=torch.uint8).reshape(1, 3, 1, 1).expand(2, 3, *size).contiguous()
    resized = resize_224(images, mode)
    assert resized.shape == (2, 3, 224, 224) and resized.dtype == torch.float32
    for c, value in enumerate(colour):
        assert torch.allclose(resized[:, c], torch.full((2, 224, 224), float(value)), atol=1e-3)
    x = preprocess(images, mode)
    for c, value in enumerate(colour):
        expected = (value / 255 - IMAGENET_MEAN[c]) / IMAGENET_STD[c]
        assert torch.allclose(x[:, c], torch.full((2, 224, 224), expected), atol=2e-5)


def test_224_images_are_only_normalised():
    """At 224 x 224 the torch-mode resize is the identity; the rest is x / 255, minus mean, over std."""
    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, size=(2, 224, 224, 3), dtype=np.uint8)
    x = preprocess(nchw(images), "torch").numpy()
    pixels = images.transpose(0, 3, 1, 2).astype(np.float64) / 255
    expected = (pixels - np.array(IMAGENET_MEAN).reshape(1, 3, 1, 1)) / np.array(IMAGENET_STD).reshape(1, 3, 1, 1)
    np.testing.assert_allclose(x, expected, atol=1e-5)


def test_pil_mode_is_pil_bicubic_on_uint8_per_image():
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, size=(2, 20, 36, 3), dtype=np.uint8)
    resized = resize_224(nchw(images), "pil").numpy()
    for image, got in zip(images, resized, strict=True):
        expected = np.asarray(Image.fromarray(image, "RGB").resize((224, 224), Image.Resampling.BICUBIC))
        np.testing.assert_array_equal(got.transpose(1, 2, 0), expected.astype(np.float32))


def test_unknown_resize_mode_is_refused():
    with pytest.raises(UsageError, match="resize mode 'bilinear'"):
        resize_224(torch.zeros(1, 3, 8, 8, dtype=torch.uint8), "bilinear")


# ---------------------------------------------------------------------------------------------- (c) the network


def _to_transformers(state: dict[str, torch.Tensor], depth: int) -> dict[str, torch.Tensor]:
    """Hub key names -> transformers 5.x Dinov2Model names (qkv split into q, k, v)."""
    out = {"embeddings.cls_token": state["cls_token"], "embeddings.mask_token": state["mask_token"],
           "embeddings.position_embeddings": state["pos_embed"],
           "embeddings.patch_embeddings.projection.weight": state["patch_embed.proj.weight"],
           "embeddings.patch_embeddings.projection.bias": state["patch_embed.proj.bias"],
           "layernorm.weight": state["norm.weight"], "layernorm.bias": state["norm.bias"]}
    for i in range(depth):
        hub, hf = f"blocks.{i}.", f"encoder.layer.{i}."
        for part, weight, bias in zip("qkv", state[hub + "attn.qkv.weight"].chunk(3),
                                      state[hub + "attn.qkv.bias"].chunk(3), strict=True):
            out[f"{hf}attention.{part}_proj.weight"], out[f"{hf}attention.{part}_proj.bias"] = weight, bias
        renames = {"attn.proj": "attention.o_proj", "norm1": "norm1", "norm2": "norm2", "mlp.fc1": "mlp.fc1",
                   "mlp.fc2": "mlp.fc2"}
        for old, new in renames.items():
            out[f"{hf}{new}.weight"], out[f"{hf}{new}.bias"] = state[f"{hub}{old}.weight"], state[f"{hub}{old}.bias"]
        out[f"{hf}layer_scale1.lambda1"] = state[hub + "ls1.gamma"]
        out[f"{hf}layer_scale2.lambda1"] = state[hub + "ls2.gamma"]
    return out


def test_cls_features_match_transformers_dinov2_on_the_pretraining_grid():
    """With the input on the position table's own grid (no resize of the table) both networks agree."""
    transformers = pytest.importorskip("transformers")
    model = tiny_dinov2()
    cfg = TINY_DINOV2
    hf_config = transformers.Dinov2Config(
        hidden_size=cfg.embed_dim, num_hidden_layers=cfg.depth, num_attention_heads=cfg.num_heads,
        mlp_ratio=cfg.mlp_hidden // cfg.embed_dim, patch_size=cfg.patch_size, image_size=cfg.pos_grid * cfg.patch_size,
        layer_norm_eps=1e-6, hidden_act="gelu", qkv_bias=True)
    hf = transformers.Dinov2Model(hf_config).eval()
    hf.load_state_dict(_to_transformers(model.state_dict(), cfg.depth), strict=True)
    x = torch.randn(3, 3, 56, 56, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        ours, theirs = model(x), hf(pixel_values=x).pooler_output
    assert ours.shape == (3, 64)
    assert torch.allclose(ours, theirs, atol=1e-5, rtol=1e-5)
    # At 224 px the table is resized: the hub's scale_factor (grid + 0.1) / 37 form, not transformers' size= form,
    # so the features differ slightly (simcli follows the hub, which EDM2 uses).
    x224 = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        gap = (model(x224) - hf(pixel_values=x224).pooler_output).abs().max().item()
    assert gap > 1e-6


def _cubic_weights(t: float, a: float = -0.75) -> list[float]:
    """Keys' cubic convolution weights of the 4 taps at offsets -1, 0, 1, 2 (torch's bicubic, A = -0.75)."""
    def near(d):  # |d| <= 1
        return ((a + 2) * d - (a + 3)) * d * d + 1

    def far(d):  # 1 < |d| < 2
        return ((a * d - 5 * a) * d + 8 * a) * d - 4 * a

    return [far(t + 1), near(t), near(1 - t), far(2 - t)]


def _hand_bicubic(table: np.ndarray, out: int, scale_factor: float) -> np.ndarray:
    """Resize [C, M, M] to [C, out, out]: output i samples source (i + 0.5) / scale_factor - 0.5, edges clamped."""
    m = table.shape[-1]
    mat = np.zeros((out, m))
    for i in range(out):
        src = (i + 0.5) / scale_factor - 0.5
        base = math.floor(src)
        for tap, w in zip(range(base - 1, base + 3), _cubic_weights(src - base), strict=True):
            mat[i, min(max(tap, 0), m - 1)] += w
    return np.einsum("ij,cjk,lk->cil", mat, table, mat)


def test_position_table_is_resized_as_the_hub_does_with_the_0_1_offset():
    model = tiny_dinov2()
    m, grid = TINY_DINOV2.pos_grid, 224 // 14
    table = model.pos_embed.detach()[0, 1:].reshape(m, m, -1).permute(2, 0, 1).double().numpy()
    expected = _hand_bicubic(table, grid, (grid + 0.1) / m)
    got = model.position_embeddings(224, 224).detach()
    assert got.shape == (1, 1 + grid * grid, 64)
    assert torch.equal(got[0, 0], model.pos_embed.detach()[0, 0])  # the CLS entry is kept
    np.testing.assert_allclose(got[0, 1:].reshape(grid, grid, -1).permute(2, 0, 1).numpy(), expected, atol=1e-5)
    plain = _hand_bicubic(table, grid, grid / m)  # the size= form (transformers): measurably different
    assert np.abs(plain - expected).max() > 1e-3
    assert model.position_embeddings(56, 56) is model.pos_embed  # on its own grid: the table itself


def test_default_config_is_hub_dinov2_vitl14_and_reads_back_from_its_shapes():
    with torch.device("meta"):  # shapes only: no 1.2 GB of memory
        model = Dinov2ViT()
    state = model.state_dict()
    assert VITL14 == Dinov2Config(embed_dim=1024, depth=24, num_heads=16, patch_size=14, mlp_hidden=4096, pos_grid=37)
    assert config_from_state_dict(state) == VITL14 and VITL14.arch_name == "dinov2_vitl14"
    assert sum(p.numel() for p in state.values()) == 304_368_640
    assert len(state) == 5 + 24 * 14 + 2
    assert {"cls_token", "pos_embed", "mask_token", "patch_embed.proj.weight", "blocks.23.ls2.gamma",
            "blocks.0.attn.qkv.weight", "norm.bias"} <= set(state)
    assert tuple(state["pos_embed"].shape) == (1, 37 * 37 + 1, 1024)


# ---------------------------------------------------------------------------------------------- (d) weights file


def _one_line(exc: UsageError) -> str:
    text = exc.message + (f" (hint: {exc.hint})" if exc.hint else "")
    assert "\n" not in text
    return text


def test_missing_weights_offline_name_the_file_its_url_and_where_to_put_it(tmp_path):
    with pytest.raises(UsageError) as info:
        get_dinov2_extractor(None)
    line = _one_line(info.value)
    hub_path = tmp_path / "torch" / "hub" / "checkpoints" / DINOV2_FILE
    assert DINOV2_URL in line and str(hub_path) in line and "offline" in line
    assert str(tmp_path / "cache" / "weights" / DINOV2_FILE) in line
    assert not hub_path.exists()  # nothing was written or downloaded


def test_weights_in_torch_hubs_cache_are_found(tmp_path, tiny_weights):
    hub_path = tmp_path / "torch" / "hub" / "checkpoints" / DINOV2_FILE
    hub_path.parent.mkdir(parents=True)
    shutil.copy(tiny_weights, hub_path)
    extractor = get_dinov2_extractor(None)
    assert extractor.weights_path == hub_path and extractor.feature_dim == 64


def test_the_file_sets_the_architecture(tiny_weights):
    model = load_dinov2(tiny_weights)
    assert model.cfg == TINY_DINOV2
    reference = tiny_dinov2()
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        assert torch.equal(model(x), reference(x))


def _refusal(path) -> str:
    with pytest.raises(UsageError) as info:
        load_dinov2(path)
    line = _one_line(info.value)
    assert str(path) in line
    return line


def test_wrong_weights_are_refused_in_one_line(tmp_path):
    state = tiny_dinov2().state_dict()
    missing = dict(state)
    del missing["blocks.1.ls2.gamma"]
    torch.save(missing, tmp_path / "missing.pth")
    assert "missing: blocks.1.ls2.gamma" in _refusal(tmp_path / "missing.pth")

    torch.save({**state, "head.weight": torch.zeros(3)}, tmp_path / "extra.pth")
    assert "unexpected: head.weight" in _refusal(tmp_path / "extra.pth")

    torch.save({**state, "norm.weight": torch.zeros(65)}, tmp_path / "shape.pth")
    assert "wrong shape: norm.weight [65] (expected [64])" in _refusal(tmp_path / "shape.pth")

    torch.save({"model": state}, tmp_path / "wrapped.pth")
    assert "no tensor 'cls_token'" in _refusal(tmp_path / "wrapped.pth")

    torch.save({k: v for k, v in state.items() if not k.startswith("blocks.")}, tmp_path / "noblocks.pth")
    assert "no transformer blocks" in _refusal(tmp_path / "noblocks.pth")

    (tmp_path / "text.pth").write_text("not a torch file\n")
    assert "could not load DINOv2 ViT-L/14 weights" in _refusal(tmp_path / "text.pth")


def test_explicit_weights_file_must_exist(tmp_path):
    with pytest.raises(UsageError) as info:
        get_dinov2_extractor(tmp_path / "nope.pth")
    assert str(tmp_path / "nope.pth") in _one_line(info.value)


def test_sha256_of_the_weights_is_recorded(tiny_weights):
    extractor = get_dinov2_extractor(tiny_weights)
    assert extractor.weights_sha256 == hashlib.sha256(tiny_weights.read_bytes()).hexdigest()
    assert extractor.features(torch.zeros(3, 3, 8, 8, dtype=torch.uint8))[0].shape == (3, 64)


class _RunsCode:
    def __reduce__(self):
        import os

        return (os.system, ("true",))


@pytest.mark.parametrize("protocol", [2, 4])
def test_a_weights_file_that_asks_to_run_code_is_refused_without_torchs_advice(tmp_path, protocol, recwarn):
    import pickle

    path = tmp_path / f"evil-{protocol}.pth"
    path.write_bytes(pickle.dumps(_RunsCode(), protocol=protocol))
    line = _refusal(path)
    assert "weights_only` set to `False`" not in line and "Weights only load failed" not in line
    if protocol == 2:  # parsed as far as the global it names
        assert "needs more than tensors to load (refused, nothing in it was run)" in line and "posix.system" in line
    assert not [w for w in recwarn if "pickle protocol" in str(w.message)]  # torch's note stays off the output

"""Loading official-format EDM pickles without running their code (simcli.teachers.edm_pickle, edm_unpickler).

Fixtures come from tests/helpers/edm_pickle_writer.py, which writes simcli's own tiny networks in the upstream
torch_utils.persistence format (edm-spec 1.2-1.6). Loaded networks must give bit-identical outputs to the
networks they were written from; hostile and broken files must be refused with one-line UsageErrors.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from simcli.errors import UsageError
from simcli.nets.registry import build_edm_network
from simcli.teachers import edm_unpickler
from simcli.teachers.edm_pickle import load_edm_pickle
from simcli.teachers.edm_unpickler import parse_legacy_storage, unpickle_edm
from tests.helpers import edm_pickle_writer as w

DDPMPP = {"model_type": "SongUNet", "embedding_type": "positional", "encoder_type": "standard",
          "decoder_type": "standard", "channel_mult_noise": 1, "resample_filter": [1, 1]}
NCSNPP = {"model_type": "SongUNet", "embedding_type": "fourier", "encoder_type": "residual",
          "decoder_type": "standard", "channel_mult_noise": 2, "resample_filter": [1, 3, 3, 1]}
ADM = {"model_type": "DhariwalUNet"}
TINY = {"model_channels": 16, "channel_mult": [1, 2], "num_blocks": 1, "attn_resolutions": [4]}
TINY_ADM = {**TINY, "model_channels": 32}  # 64 channels at 4x4 -> one attention head

# (id, class_name, init_kwargs) in the order train.py records them (edm-spec 2.1), shrunk to 8x8 images.
VARIANTS = [
    ("edm-ddpmpp-uncond", "EDMPrecond", {**DDPMPP, **TINY, "augment_dim": 9, "dropout": 0.13, "use_fp16": False,
                                         "img_resolution": 8, "img_channels": 3, "label_dim": 0}),
    ("edm-ddpmpp-cond", "EDMPrecond", {**DDPMPP, **TINY, "augment_dim": 9, "dropout": 0.13, "use_fp16": False,
                                       "img_resolution": 8, "img_channels": 3, "label_dim": 10}),
    ("edm-ncsnpp", "EDMPrecond", {**NCSNPP, **TINY, "augment_dim": 9, "dropout": 0.13, "use_fp16": False,
                                  "img_resolution": 8, "img_channels": 3, "label_dim": 0}),
    ("edm-adm", "EDMPrecond", {**ADM, **TINY_ADM, "dropout": 0.1, "use_fp16": True, "img_resolution": 8,
                               "img_channels": 3, "label_dim": 10}),
    ("vp-ddpmpp", "VPPrecond", {**DDPMPP, **TINY, "dropout": 0.1, "use_fp16": False, "img_resolution": 8,
                                "img_channels": 3, "label_dim": 0}),
    ("ve-ncsnpp", "VEPrecond", {**NCSNPP, **TINY, "dropout": 0.1, "use_fp16": False, "img_resolution": 16,
                                "img_channels": 3, "label_dim": 0}),
    ("iddpm-adm", "iDDPMPrecond", {**ADM, **TINY_ADM, "dropout": 0.1, "use_fp16": False, "img_resolution": 8,
                                   "img_channels": 3, "label_dim": 10}),
]
BASE = VARIANTS[0]
OUTER_GLOBALS_NUMPY1 = {
    "torch_utils.persistence._reconstruct_persistent_obj", "collections.OrderedDict",
    "torch.nn.modules.container.ModuleDict", "torch._utils._rebuild_parameter", "torch._utils._rebuild_tensor_v2",
    "torch.storage._load_from_bytes", "numpy.core.multiarray.scalar", "numpy.dtype",
}


def _network(class_name: str, init_kwargs: dict, seed: int = 0) -> torch.nn.Module:
    """A network with every parameter randomised (no zero-initialised layers), in eval mode."""
    torch.manual_seed(seed)
    net = build_edm_network(class_name, dict(init_kwargs))
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return net.eval()


def _outputs(net: torch.nn.Module, init_kwargs: dict) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    res, label_dim, aug_dim = init_kwargs["img_resolution"], init_kwargs["label_dim"], init_kwargs.get("augment_dim", 0)
    x = torch.randn(4, 3, res, res, generator=g)
    sigma = torch.tensor([0.01, 0.3, 2.0, 40.0])
    labels = torch.nn.functional.one_hot(torch.arange(4) % label_dim, label_dim).float() if label_dim else None
    extra = {"augment_labels": torch.randn(4, aug_dim, generator=g)} if aug_dim else {}
    with torch.no_grad():
        return net(x, sigma, labels, **extra)


def _write(tmp_path: Path, variant=BASE, name: str = "net.pkl", **options) -> tuple[Path, torch.nn.Module]:
    _, class_name, init_kwargs = variant
    net = _network(class_name, init_kwargs)
    return w.write_edm_pickle(tmp_path / name, net, init_kwargs, **options), net


def assert_refused(path: Path, expect: str, **kwargs) -> str:
    """The one-line message refusing to load `path`; it must contain `expect`."""
    with pytest.raises(UsageError, match=re.escape(expect)) as info:
        load_edm_pickle(path, **kwargs)
    assert "\n" not in info.value.message
    return info.value.message


# ---- equivalence -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS, ids=[v[0] for v in VARIANTS])
def test_loaded_network_is_bit_identical(tmp_path, variant):
    _, class_name, init_kwargs = variant
    path, net = _write(tmp_path, variant)
    loaded, meta = load_edm_pickle(path)

    assert type(loaded) is type(net) and type(loaded.model) is type(net.model)
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    ours, theirs = net.state_dict(), loaded.state_dict()
    assert list(ours) == list(theirs) and all(torch.equal(ours[k], theirs[k]) for k in ours)
    expected = _outputs(net, init_kwargs)
    assert torch.equal(_outputs(loaded, init_kwargs), expected)
    assert not torch.equal(_outputs(_network(class_name, init_kwargs, seed=7), init_kwargs), expected)

    assert meta["class_name"] == class_name and meta["model_class_name"] == init_kwargs["model_type"]
    assert meta["init_kwargs"] == init_kwargs
    assert meta["keys"] == ["ema", "loss_fn", "augment_pipe", "dataset_kwargs"]
    assert meta["file_size"] == path.stat().st_size and meta["num_tensors"] == len(ours)
    assert meta["persistence_version"] == 6 and meta["other_objects"]["loss_fn"] == "EDMLoss"


@pytest.mark.parametrize("spelling", [w.NUMPY1, w.NUMPY2], ids=["numpy1", "numpy2"])
@pytest.mark.parametrize("ordered_dicts", [False, True], ids=["torch2-dicts", "torch1-ordereddicts"])
def test_both_numpy_spellings_and_module_dict_styles_load(tmp_path, spelling, ordered_dicts):
    path, net = _write(tmp_path, numpy_spelling=spelling, ordered_dicts=ordered_dicts)
    assert f"{spelling}.scalar" in _globals(path)
    loaded, _ = load_edm_pickle(path)
    assert torch.equal(_outputs(loaded, BASE[2]), _outputs(net, BASE[2]))


def _globals(path: Path) -> set[str]:
    """Every global the outer pickle names (recorded while the restricted unpickler reads it)."""
    seen = set()

    class Recording(edm_unpickler._OuterUnpickler):
        def find_class(self, module, name):
            seen.add(f"{module}.{name}")
            return super().find_class(module, name)

    Recording(io.BytesIO(path.read_bytes())).load()
    return seen


def test_tensors_written_by_torch_itself_load(tmp_path):
    path, net = _write(tmp_path, torch_tensors=True)  # tensors reduced by torch's own __reduce_ex__
    assert _globals(path) == OUTER_GLOBALS_NUMPY1
    loaded, _ = load_edm_pickle(path)
    assert torch.equal(_outputs(loaded, BASE[2]), _outputs(net, BASE[2]))


def test_writer_emits_exactly_the_spec_globals(tmp_path):
    path, _ = _write(tmp_path)
    assert _globals(path) == OUTER_GLOBALS_NUMPY1


def test_module_src_is_never_executed(tmp_path):
    marker = tmp_path / "module_src_ran"
    src = f"import pathlib\npathlib.Path({str(marker)!r}).touch()\nclass EDMPrecond: pass\n"
    path, net = _write(tmp_path, module_src=src)
    loaded, meta = load_edm_pickle(path)
    assert not marker.exists()
    assert meta["module_src_sha256"] == hashlib.sha256(src.encode()).hexdigest()
    assert path.read_bytes().count(b"module_src_ran") == 1  # one shared str, memoised like upstream's


def test_other_key_can_be_loaded(tmp_path):
    path, net = _write(tmp_path, key="net", extras=False)
    loaded, meta = load_edm_pickle(path, key="net")
    assert meta["keys"] == ["net"] and torch.equal(_outputs(loaded, BASE[2]), _outputs(net, BASE[2]))


# ---- tensor blobs and numpy scalars ------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64, torch.int64])
def test_legacy_blob_is_byte_identical_to_torch_and_parses(dtype):
    t = (torch.randn(5, 7) * 100).to(dtype)
    _, (blob,) = t._typed_storage().__reduce__()  # what torch itself puts in _load_from_bytes
    key = str(t.untyped_storage()._cdata)
    assert w.legacy_storage_blob(t, key=key) == blob
    assert torch.equal(parse_legacy_storage(blob).flat, t.reshape(-1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TypedStorage deprecation
        reference = torch.load(io.BytesIO(blob), weights_only=True)  # the alternative the spec mentions
        assert torch.equal(torch.tensor(reference.tolist(), dtype=dtype), t.reshape(-1))


def test_real_torch_pickled_parameter_and_numpy_scalars_load():
    p = torch.nn.Parameter(torch.randn(3, 4), requires_grad=False)
    loaded = unpickle_edm(io.BytesIO(pickle.dumps({"p": p, "b": p.data.t()}, protocol=4)))
    assert type(loaded["p"]) is torch.Tensor and torch.equal(loaded["p"], p.data)
    assert torch.equal(loaded["b"], p.data.t())  # shares p's storage: a strided view is honoured
    scalars = {"f8": np.float64(np.sqrt(0.5)), "f4": np.float32(1.5), "i8": np.int64(-3), "b": np.bool_(True)}
    assert unpickle_edm(io.BytesIO(pickle.dumps(scalars, protocol=4))) == {k: v.item() for k, v in scalars.items()}


@pytest.mark.parametrize("spelling", [w.NUMPY1, w.NUMPY2])
def test_writer_numpy_scalar_decodes_to_the_same_float(spelling):
    value = float(np.sqrt(1 / 3))
    assert unpickle_edm(io.BytesIO(w.dumps([w.numpy_float64(value, spelling)]))) == [value]


def test_tensor_offset_and_stride_are_honoured():
    storage = torch.arange(40, dtype=torch.float32)
    node = w.tensor_node(storage, offset=3, size=(4, 5), stride=(1, 6))
    loaded = unpickle_edm(io.BytesIO(w.dumps(node)))
    assert torch.equal(loaded, torch.as_strided(storage, (4, 5), (1, 6), 3))
    overrun = w.tensor_node(storage, offset=30, size=(4, 5), stride=(5, 1))
    with pytest.raises(UsageError, match="overruns its storage"):
        unpickle_edm(io.BytesIO(w.dumps(overrun)))


# ---- hostile files -----------------------------------------------------------------------------------------

PAYLOADS = [("os.system", "posix.system"), ("exec", "builtins.exec"), ("subprocess", "subprocess.check_call"),
            ("copyreg", "copyreg._reconstructor")]


def test_malicious_payload_is_real_under_plain_pickle(tmp_path):
    marker = tmp_path / "ran"
    pickle.loads(w.dumps(w.malicious_payload("exec", marker)))
    assert marker.exists()  # so the refusals below are meaningful


@pytest.mark.parametrize("where", ["nested", "top", "ema"])
@pytest.mark.parametrize("kind,qualname", PAYLOADS, ids=[p[0] for p in PAYLOADS])
def test_malicious_pickle_is_refused_without_running(tmp_path, kind, qualname, where):
    marker = tmp_path / "pwned"
    _, class_name, init_kwargs = BASE
    path = tmp_path / "evil.pkl"
    path.write_bytes(w.malicious_pickle_bytes(_network(class_name, init_kwargs), init_kwargs, kind, marker, where))
    message = assert_refused(path, qualname)
    assert qualname in message and "nothing from the file was executed" in message
    assert not marker.exists()


def test_malicious_global_inside_a_tensor_blob_is_refused(tmp_path):
    blob = w.legacy_storage_blob(torch.ones(3), storage_type=w.Global("posix", "system"))
    with pytest.raises(UsageError, match=r"posix\.system.*nothing from the file was executed"):
        unpickle_edm(io.BytesIO(w.dumps(w.tensor_node(torch.ones(3), blob=blob))))


def test_persistent_ids_are_refused():
    with pytest.raises(UsageError, match="persistent ids"):
        unpickle_edm(io.BytesIO(w.dumps(w.PersId(("storage", 1)))))


# ---- broken files ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fraction", [0.5, 0.999, 0.01])
def test_truncated_file(tmp_path, fraction):
    path, _ = _write(tmp_path, truncate_to=fraction)
    assert_refused(path, "is truncated")


@pytest.mark.parametrize("content", [b"", b"hello world\n", b"PK\x03\x04zipdata"], ids=["empty", "text", "zip"])
def test_not_a_pickle(tmp_path, content):
    path = tmp_path / "x.pkl"
    path.write_bytes(content)
    assert_refused(path, "is not a pickle")


def test_missing_file(tmp_path):
    assert_refused(tmp_path / "nope.pkl", "not found")


@pytest.mark.parametrize("version", [5, 7])
def test_wrong_persistence_version(tmp_path, version):
    path, _ = _write(tmp_path, version=version)
    message = assert_refused(path, f"format version {version}")
    assert f"format version {version}" in message and "only version 6" in message


def test_missing_ema_key_lists_the_keys(tmp_path):
    path, _ = _write(tmp_path, key="net")
    message = assert_refused(path, "no 'ema' entry")
    assert "no 'ema' entry" in message and "keys present: net, loss_fn, augment_pipe, dataset_kwargs" in message


def test_unknown_class_name(tmp_path):
    path, _ = _write(tmp_path, class_name="EDM2Precond")
    assert_refused(path, "unknown EDM network class 'EDM2Precond'")


@pytest.mark.parametrize("change,expect", [
    ({"model_channels": 32}, "with other shapes"),
    ({"augment_dim": 0}, "1 unexpected (model.map_augment.weight)"),
    ({"label_dim": 10}, "2 missing (model.map_label.weight, model.map_label.bias)"),
    ({**NCSNPP}, "do not match the recorded EDMPrecond architecture"),
], ids=["shapes", "unexpected", "missing", "ncsnpp-vs-ddpmpp"])
def test_tensors_not_matching_the_recorded_architecture(tmp_path, change, expect):
    _, class_name, init_kwargs = BASE
    path = w.write_edm_pickle(tmp_path / "bad.pkl", _network(class_name, init_kwargs), {**init_kwargs, **change})
    assert_refused(path, expect)


def test_top_level_not_a_dict_and_ema_not_a_network(tmp_path):
    path = tmp_path / "list.pkl"
    path.write_bytes(pickle.dumps([1, 2], protocol=4))
    assert_refused(path, "not the dict of an EDM snapshot")
    path.write_bytes(pickle.dumps({"ema": {"weights": 1}}, protocol=4))
    assert_refused(path, "not a persistent network object")


def test_build_on_an_allowed_global_is_refused():
    # GLOBAL torch._utils _rebuild_tensor_v2; BUILD({'fn': 1}): would rewire the stand-in if allowed.
    data = b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n}X\x02\x00\x00\x00fnK\x01sb."
    with pytest.raises(UsageError, match=r"modify the global torch\._utils\._rebuild_tensor_v2"):
        unpickle_edm(io.BytesIO(data))
    assert edm_unpickler._rebuild_tensor_v2.__name__ == "_rebuild_tensor_v2"


def test_recorded_attributes_must_match_the_rebuilt_network(tmp_path):
    _, class_name, init_kwargs = BASE
    tree = w.snapshot_tree(_network(class_name, init_kwargs), init_kwargs)
    tree["ema"].args[0]["state"]["sigma_data"] = 0.3  # differs from the default the kwargs rebuild
    path = tmp_path / "attr.pkl"
    path.write_bytes(w.dumps(tree))
    assert_refused(path, "recorded sigma_data=0.3 but the rebuilt network has sigma_data=0.5")


def test_tensor_dtype_must_match(tmp_path):
    _, class_name, init_kwargs = BASE
    net = _network(class_name, init_kwargs).double()
    path = w.write_edm_pickle(tmp_path / "f64.pkl", net, init_kwargs)
    assert_refused(path, "147 with other dtypes (model.map_augment.weight torch.float64 in the file vs torch.float32 here")


@pytest.mark.slow
def test_full_size_cifar10_ddpmpp_round_trip(tmp_path):
    """The edm-cifar10-32x32-uncond-vp configuration (edm-spec 2.1): 55,733,891 parameters, about 223 MB."""
    init_kwargs = {**DDPMPP, "model_channels": 128, "channel_mult": [2, 2, 2], "augment_dim": 9, "dropout": 0.13,
                   "use_fp16": False, "img_resolution": 32, "img_channels": 3, "label_dim": 0}
    path, net = _write(tmp_path, ("cifar", "EDMPrecond", init_kwargs), module_src="#" * 35832)
    loaded, meta = load_edm_pickle(path)
    assert meta["num_parameters"] == 55_733_891 and meta["num_tensors"] == 417 + 8
    assert abs(meta["file_size"] - 223_185_564) < 500_000  # edm-spec 2: the emulated official size
    ours, theirs = net.state_dict(), loaded.state_dict()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)

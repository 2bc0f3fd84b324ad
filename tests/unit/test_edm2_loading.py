"""EDM2 snapshots (NVlabs/edm2 pickles) read by the restricted unpickler: faithful files load exactly, hostile ones
are refused before anything runs or is allocated; the catalog's names, URLs and records; the latent space's decode."""

from __future__ import annotations

import copy
import math
import pickle

import numpy as np
import pytest
import torch

from simcli.errors import UsageError
from simcli.nets.edm2_precond import EDM2Precond
from simcli.teachers.edm2_catalog import (
    EDM2_NETWORKS,
    RAW_MEAN,
    RAW_STD,
    edm2_network_record,
    get_edm2_network,
    is_edm2_name,
    sd_vae_latents,
)
from simcli.teachers.edm2_latents import Edm2Latents, decode_latents
from simcli.teachers.edm_files import teacher_path
from simcli.teachers.edm_pickle import load_edm_pickle
from simcli.teachers.registry import describe_teacher_name, similar_teachers
from tests.helpers.edm2_pickle_writer import edm2_snapshot_bytes, encoder_node, ndarray_node, tiny_edm2
from tests.helpers.edm_pickle_writer import Global, NewDict, Reduce, dumps, malicious_payload


def _half_rounded(net: EDM2Precond) -> EDM2Precond:
    """The network with every weight rounded to float16, as a post-hoc snapshot stores it."""
    ref = copy.deepcopy(net)
    with torch.no_grad():
        for t in [*ref.parameters(), *ref.buffers()]:
            t.copy_(t.half().float())
    return ref


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_snapshot_loads_exactly_with_its_latent_space(tmp_path, dtype):
    net, kwargs = tiny_edm2(seed=3)
    path = tmp_path / "snap.pkl"
    path.write_bytes(edm2_snapshot_bytes(net, kwargs, vae_name="some/vae", dtype=dtype))
    loaded, meta = load_edm_pickle(path)
    ref = _half_rounded(net) if dtype == torch.float16 else net
    x, sigma, labels = torch.randn(3, 4, 8, 8), torch.tensor([0.002, 1.0, 80.0]), torch.eye(10)[[1, 4, 9]]
    assert torch.equal(loaded(x, sigma, labels), ref(x, sigma, labels))
    d, logvar = loaded(x, sigma, labels, return_logvar=True)
    assert torch.equal(logvar, ref(x, sigma, labels, return_logvar=True)[1])
    assert all(p.dtype == torch.float32 for p in loaded.state_dict().values())
    assert meta["class_name"] == "Precond" and meta["model_class_name"] == "UNet"
    assert meta["other_objects"] == {"dataset_kwargs": "dict", "encoder": "StabilityVAEEncoder", "loss_fn": "EDM2Loss"}
    latents = meta["architecture"]["latents"]
    # StabilityVAEEncoder's float32 constants, exactly: scale = 0.5 / raw_std, bias = -raw_mean * scale
    scale = np.float32(0.5) / np.float32(RAW_STD)
    assert latents["scale"] == [float(v) for v in scale]
    assert latents["bias"] == [float(v) for v in np.float32(0) - np.float32(RAW_MEAN) * scale]
    assert latents["vae"] == "some/vae" and latents["batch_size"] == 8


def test_the_catalog_record_equals_what_loading_an_official_file_records(tmp_path):
    """The dry-run record of a catalog name (no download) is the record a loaded file of that architecture gives."""
    assert sd_vae_latents() == {**Edm2Latents.from_record(sd_vae_latents(), "x").record()}
    net, kwargs = tiny_edm2()
    path = tmp_path / "snap.pkl"
    path.write_bytes(edm2_snapshot_bytes(net, kwargs))  # the default encoder: stabilityai/sd-vae-ft-mse
    _, meta = load_edm_pickle(path)
    assert meta["architecture"]["latents"] == sd_vae_latents()
    record = edm2_network_record(get_edm2_network("edm2-img512-xs"))
    assert record["latents"] == sd_vae_latents()
    assert record["init_kwargs"] == {"model_channels": 128, "dropout": 0.0, "img_resolution": 64, "img_channels": 4,
                                     "label_dim": 1000}
    assert "latents" not in edm2_network_record(get_edm2_network("edm2-img64-s"))  # ImageNet-64: pixels


def test_a_pixel_network_has_no_latent_space(tmp_path):
    net, kwargs = tiny_edm2(img_channels=3, label_dim=0)
    path = tmp_path / "snap.pkl"
    path.write_bytes(edm2_snapshot_bytes(net, kwargs, vae_name=None))
    loaded, meta = load_edm_pickle(path)
    assert "latents" not in meta["architecture"] and loaded.sample_shape == (3, 8, 8) and loaded.label_dim == 0


@pytest.mark.parametrize("kind", ["os.system", "exec", "subprocess"])
@pytest.mark.parametrize("where", ["root", "encoder", "array"])
def test_code_in_an_edm2_snapshot_never_runs(tmp_path, kind, where):
    marker = tmp_path / "pwned"
    net, kwargs = tiny_edm2()
    payload = malicious_payload(kind, marker)
    if where == "root":
        data = dumps(payload)
    elif where == "encoder":
        data = edm2_snapshot_bytes(net, kwargs, encoder=payload)
    else:  # an encoder whose scale is the payload instead of an array
        data = edm2_snapshot_bytes(net, kwargs, encoder=_encoder_with(scale=payload))
    path = tmp_path / "evil.pkl"
    path.write_bytes(data)
    with pytest.raises(UsageError, match="not on the EDM allow-list; nothing from the file was executed"):
        load_edm_pickle(path)
    assert not marker.exists()


def _encoder_with(**fields) -> Reduce:
    node = encoder_node("some/vae")
    node.args[0]["state"].update(fields)
    return node


def test_a_huge_recorded_architecture_is_refused_before_anything_is_allocated(tmp_path):
    net, kwargs = tiny_edm2()
    path = tmp_path / "huge.pkl"
    path.write_bytes(edm2_snapshot_bytes(net, {**kwargs, "model_channels": 1_000_000}))
    with pytest.raises(UsageError, match="parameters .* more than the") as info:
        load_edm_pickle(path)
    assert "\n" not in info.value.message


@pytest.mark.parametrize("bad, match", [
    ({"scale": "text"}, "malformed EDM2 latent-space record"),
    ({"batch_size": 10**9}, "malformed EDM2 latent-space record"),
    ({"vae_name": 7}, "malformed EDM2 latent-space record"),
    ({"scale": ndarray_node(np.float32([0.1, 0.2]))}, "malformed EDM2 latent-space record"),  # 2 channels, 4 biases
    ({"scale": ndarray_node(np.float32([np.nan, 1, 1, 1]))}, "malformed EDM2 latent-space record"),
])
def test_a_malformed_encoder_record_is_refused_in_one_line(tmp_path, bad, match):
    net, kwargs = tiny_edm2()
    path = tmp_path / "bad.pkl"
    path.write_bytes(edm2_snapshot_bytes(net, kwargs, encoder=_encoder_with(**bad)))
    with pytest.raises(UsageError, match=match) as info:
        load_edm_pickle(path)
    assert "\n" not in info.value.message


def test_numpy_arrays_whose_bytes_disagree_with_their_shape_are_refused(tmp_path):
    forged = ndarray_node(np.float32([1, 2, 3, 4]))
    forged.state = (1, (400,), forged.state[2], False, forged.state[4])  # claims 400 elements, holds 4
    net, kwargs = tiny_edm2()
    path = tmp_path / "forged.pkl"
    path.write_bytes(edm2_snapshot_bytes(net, kwargs, encoder=_encoder_with(scale=forged)))
    with pytest.raises(UsageError, match="malformed numpy array"):
        load_edm_pickle(path)


def test_an_easydict_with_instance_state_or_another_encoder_is_refused(tmp_path):
    net, kwargs = tiny_edm2()
    other = edm2_snapshot_bytes(net, kwargs, encoder=encoder_node("v", class_name="FancyEncoder"))
    (tmp_path / "a.pkl").write_bytes(other)
    with pytest.raises(UsageError, match="unknown EDM2 encoder 'FancyEncoder'"):
        load_edm_pickle(tmp_path / "a.pkl")
    stateful = NewDict(Global("dnnlib.util", "EasyDict"), {})
    data = bytearray(dumps(stateful))
    data[-1:] = b"}\x8c\x01aK\x01sb."  # BUILD({"a": 1}) before STOP: instance state on the EasyDict
    (tmp_path / "b.pkl").write_bytes(bytes(data))
    with pytest.raises(UsageError, match="EasyDict: it carries instance state"):
        load_edm_pickle(tmp_path / "b.pkl")


def test_fp16_weights_load_but_other_dtypes_are_refused(tmp_path):
    net, kwargs = tiny_edm2()
    path = tmp_path / "bf16.pkl"
    path.write_bytes(edm2_snapshot_bytes(net, kwargs, dtype=torch.bfloat16))
    with pytest.raises(UsageError, match="with other dtypes"):
        load_edm_pickle(path)


def test_names_urls_and_cache_paths_of_the_catalog(monkeypatch, tmp_path):
    monkeypatch.setenv("SIMCLI_CACHE", str(tmp_path))
    xs = get_edm2_network("edm2-img512-xs")
    assert xs == EDM2_NETWORKS["edm2-img512-xs-fid"].__class__("edm2-img512-xs", "edm2-img512-xs-2147483-0.135", "fid", 3.53)
    assert xs.url == "https://nvlabs-fi-cdn.nvidia.com/edm2/posthoc-reconstructions/edm2-img512-xs-2147483-0.135.pkl"
    assert teacher_path("edm2-img512-xs") == tmp_path / "edm2" / "posthoc-reconstructions" / xs.file_name
    guide = get_edm2_network("edm2-img512-xs-uncond-2147483-0.045")
    assert (guide.dataset, guide.size, guide.conditional) == ("img512", "xs", False)
    assert get_edm2_network("edm2-img512-xxl-dino").stem == "edm2-img512-xxl-0939524-0.150"
    assert not is_edm2_name("edm2-img512-xxxl") and not is_edm2_name("edm2-img512-xs-2147483-0.13")
    for name in ("edm2-img512-xs", "edm2-img512-l-dino", "edm2-img512-xs-uncond-2147483-0.045"):
        assert describe_teacher_name(name) == (name, "edm2-img512")
    assert describe_teacher_name("edm2-img64-m")[1] == "edm2-img64"
    assert "edm2-img512-xs" in similar_teachers("edm2-img512-x")
    with pytest.raises(UsageError, match="unknown teacher"):
        describe_teacher_name("edm2-img1024-xs")


def test_sizes_of_the_catalog_follow_the_element_counts():
    """Every named architecture has an emulated size; a float16 file holds two bytes per element plus records."""
    from simcli.teachers.edm2_catalog import APPROX_SIZE_BYTES, CHANNELS

    counts = {"xs": 124_713_253, "s": 280_212_837, "m": 497_807_781, "l": 777_498_085, "xl": 1_119_283_749,
              "xxl": 1_523_164_773}  # parameters of the img512 networks (tests/unit/test_edm2_nets.py)
    for entry in EDM2_NETWORKS.values():
        size = entry.approx_size_bytes
        assert size is not None, entry.name
        if entry.dataset == "img512" and entry.conditional:  # elements: parameters plus 512 + ch buffer elements
            elements = counts[entry.size] + 512 + CHANNELS[entry.size]
            assert 2 * elements + 100_000 < size < 2 * elements + 200_000
    assert set(CHANNELS) == set(counts) and len(APPROX_SIZE_BYTES) == 13


def test_edm2_decode_inverts_the_normalisation_then_truncates():
    """uint8 = trunc(clamp(VAE(x / scale - bias / scale), 0, 1) * 255), batch by batch (encoders.py decode)."""
    scale, bias = torch.tensor([0.5, 2.0, 1.0, 4.0]), torch.tensor([0.1, -0.2, 0.0, 1.0])
    calls = []

    def vae(z):  # a stand-in decoder: the first three channels, as pixels
        calls.append(len(z))
        return z[:, :3]

    raw = torch.tensor([0.0, 0.5, 0.999, 1.5]).reshape(1, 4, 1, 1).expand(5, 4, 2, 2)
    latents = raw * scale.reshape(1, 4, 1, 1) + bias.reshape(1, 4, 1, 1)
    images = decode_latents(vae, latents, scale, bias, batch_size=2)
    assert calls == [2, 2, 1] and images.dtype == torch.uint8 and images.shape == (5, 3, 2, 2)
    expected = torch.tensor([0, 127, 254], dtype=torch.uint8)  # 0.5*255 = 127.5 -> 127, 0.999*255 = 254.7 -> 254
    assert torch.equal(images[:, :, 0, 0], expected.expand(5, 3))


def test_latent_records_round_trip_and_refuse_damage():
    record = sd_vae_latents()
    assert Edm2Latents.from_record(record, "f").record() == record
    for damage in ({"kind": "other"}, {"scale": [0.0, 1.0, 1.0, 1.0]}, {"bias": [1.0]}, {"vae": ""},
                   {"scale": [math.inf] * 4}, {"batch_size": 0}):
        with pytest.raises(UsageError, match="f: malformed EDM2 latent-space record"):
            Edm2Latents.from_record({**record, **damage}, "f")


def test_a_pickle_holding_only_plain_arrays_reads_as_numpy():
    """The array stand-ins give the same values numpy's own unpickler would (EDM2 encoder constants, both spellings
    and pickle protocols 3 to 5)."""
    import io

    from simcli.teachers.edm_unpickler import unpickle_edm

    arrays = {"a": np.float32([0.1, 0.2]), "b": np.arange(6.0).reshape(2, 3), "c": np.asfortranarray(np.eye(3))}
    for protocol in (3, 4, 5):
        back = unpickle_edm(io.BytesIO(pickle.dumps(arrays, protocol=protocol)))
        for key, value in arrays.items():
            assert np.array_equal(back[key].array, value) and back[key].array.dtype == value.dtype


def test_paper_sampler_settings_of_edm2_teachers_are_edm2s_32_heun_steps():
    from simcli.sampling.run import resolve_heun_settings

    settings = resolve_heun_settings("edm2-img512-xxl-dino", paper=True)
    assert (settings.num_steps, settings.s_churn, settings.nfe, settings.preset) == (32, 0.0, 63, "paper")
    assert resolve_heun_settings("edm2-img512-xs", paper=True, steps=8).num_steps == 8

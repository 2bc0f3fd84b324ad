"""Write tests/data/edm2-reference.pt: outputs of NVlabs/edm2's own `Precond` for simcli's EDM2 tests.

Run by hand, never by the test suite:

    mkdir -p /tmp/edm2-official
    git -C <mirror of NVlabs/edm2> archive HEAD | tar -x -C /tmp/edm2-official
    .venv/bin/python tests/tools/make_edm2_reference.py --official /tmp/edm2-official \
        --out tests/data/edm2-reference.pt --commit 4bf8162

The official classes are imported from --official (training/networks_edm2.py); nothing of them is copied here.
tests/unit/test_edm2_nets.py rebuilds every network with simcli.nets.edm2_precond.EDM2Precond, loads the state_dict
stored here strictly and compares outputs bit for bit (float32, CPU, one thread, as here).

What is stored, per official configuration (img512 xs, s, m, l, xl, xxl; img512 xs-uncond and s-uncond; img64 xs,
s, m, l, xl; their dropout, img_channels and label_dim as in train_edm2.py's presets):
  - the network at reduced width: model_channels 2 and channels_per_head 2 (3 attention heads at the third level and
    4 at the bottleneck), official channel_mult, num_blocks, label_dim and dropout. To keep the file near 3 MB,
    img512-xs keeps img_resolution 64 with attention at 16x16 and 8x8 exactly as upstream; every other configuration
    uses img_resolution 32 with attention moved to the same levels (8x8 and 4x4). At this width the networks of
    one family (img512, img64) differ only in dropout, so each configuration is seeded differently.
  - its state_dict (packed: keys, shapes and one flat tensor). The float32 values are first rounded to
    float16-representable ones (so the file can store them as float16 without loss) and the zero-initialised gains (out_gain, emb_gain) are set to nonzero values, else
    the U-Net output would be exactly zero and the test would check nothing;
  - the digest of the seeded initial state_dict (SHA-256 of the tensors' bytes, in state_dict order), to check
    that simcli draws its random initialisation in the same order;
  - inputs: x (2 samples, float16-representable, stored as float16), a pair of noise levels (together the
    configurations cover 0.002..80 geometrically; img512-xs has 0.002 and 80), class indices (one-hot in use);
  - eval-mode outputs: (D, logvar) at the per-sample sigmas with labels, and (D, logvar) at a 0-d sigma of 2.5
    (SiDA's generator sigma) with no labels (the zero label, or none for unconditional nets);
  - train-mode outputs with torch.manual_seed(train_seed) right before the call (dropout masks), and the weights
    after that forward pass (forced weight normalisation): in full for img512-xs, as per-tensor SHA-256 digests for
    the others (first 16 hex digits).
Also, full-size facts counted on the meta device: parameter counts of every preset and the state_dict keys and
shapes of img512-xs, img512-xs-uncond and img64-xs.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import math
import sys
import types
from pathlib import Path

import torch

# (img_channels, label_dim, full model_channels, dropout) per official preset (train_edm2.py, generate_images.py).
PRESETS = {
    "img512-xs": (4, 1000, 128, 0.0),
    "img512-s": (4, 1000, 192, 0.0),
    "img512-m": (4, 1000, 256, 0.1),
    "img512-l": (4, 1000, 320, 0.1),
    "img512-xl": (4, 1000, 384, 0.1),
    "img512-xxl": (4, 1000, 448, 0.1),
    "img512-xs-uncond": (4, 0, 128, 0.0),
    "img512-s-uncond": (4, 0, 192, 0.0),
    "img64-xs": (3, 1000, 128, 0.0),
    "img64-s": (3, 1000, 192, 0.0),
    "img64-m": (3, 1000, 256, 0.1),
    "img64-l": (3, 1000, 320, 0.1),
    "img64-xl": (3, 1000, 384, 0.1),
}
FULL_SHAPES_FOR = ("img512-xs", "img512-xs-uncond", "img64-xs")
FULL_OUTPUTS_FOR = "img512-xs"  # reduced at img_resolution 64; post-train weights stored in full
REDUCED_WIDTH = dict(model_channels=2, channels_per_head=2)
BATCH = 2
SIGMA_MIN, SIGMA_MAX = 0.002, 80.0
GENERATOR_SIGMA = 2.5


def import_official(root: Path) -> type:
    """training.networks_edm2.Precond from the extracted repository; absent third-party modules that only
    dnnlib's download helpers use are replaced by empty stand-ins (in this process only)."""
    for name in ("requests", "click", "psutil"):
        if importlib.util.find_spec(name) is None:
            sys.modules[name] = types.ModuleType(name)
    sys.path.insert(0, str(root))
    from training.networks_edm2 import Precond  # from the --official directory

    return Precond


def digest(tensor: torch.Tensor) -> str:
    """The first 16 hex digits of the SHA-256 of a tensor's bytes (enough to tell two tensors apart)."""
    return hashlib.sha256(tensor.detach().cpu().contiguous().numpy().tobytes()).hexdigest()[:16]


def state_digest(state: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name, tensor in state.items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def pack(state: dict[str, torch.Tensor], dtype: torch.dtype) -> dict:
    """A state_dict as its keys, shapes and one flat tensor of all values in order (one record in the file instead
    of hundreds); tests/unit/test_edm2_nets.py unpacks it."""
    flat = torch.cat([t.detach().reshape(-1).to(dtype) for t in state.values()])
    return dict(keys=list(state), shapes=[list(t.shape) for t in state.values()], values=flat)


def reduced_kwargs(name: str) -> dict:
    img_channels, label_dim, _, dropout = PRESETS[name]
    full_res = name == FULL_OUTPUTS_FOR
    return dict(
        img_resolution=64 if full_res else 32,
        img_channels=img_channels,
        label_dim=label_dim,
        dropout=dropout,
        attn_resolutions=[16, 8] if full_res else [8, 4],
        **REDUCED_WIDTH,
    )


def full_kwargs(name: str) -> dict:
    """The `_init_kwargs` an official pickle of this preset records (training_loop.py: interface + network kwargs)."""
    img_channels, label_dim, channels, dropout = PRESETS[name]
    return dict(img_resolution=64, img_channels=img_channels, label_dim=label_dim, model_channels=channels,
                dropout=dropout)


def prepare_weights(net: torch.nn.Module, gen: torch.Generator) -> None:
    """Round every tensor to float16-representable float32 and give the zero gains nonzero values."""
    with torch.no_grad():
        for name, tensor in net.state_dict().items():
            if name.endswith("_gain"):
                tensor.copy_(torch.rand([], generator=gen) * 0.8 + 0.2)
            tensor.copy_(tensor.to(torch.float16).to(torch.float32))


def sigma_schedule(count: int) -> list[float]:
    """count noise levels spaced geometrically over [SIGMA_MIN, SIGMA_MAX], both ends included."""
    ratio = math.log(SIGMA_MAX / SIGMA_MIN)
    return [SIGMA_MIN * math.exp(ratio * i / (count - 1)) for i in range(count)]


def one_hot(indices: torch.Tensor, label_dim: int) -> torch.Tensor | None:
    return torch.nn.functional.one_hot(indices, label_dim).to(torch.float32) if label_dim else None


def reference_case(Precond: type, name: str, index: int, sigmas: list[float]) -> dict:
    kwargs = reduced_kwargs(name)
    seed = 1000 + index
    torch.manual_seed(seed)
    net = Precond(**kwargs)
    init_digest = state_digest(net.state_dict())
    gen = torch.Generator().manual_seed(seed)
    prepare_weights(net, gen)
    res, channels, label_dim = kwargs["img_resolution"], kwargs["img_channels"], kwargs["label_dim"]
    x = torch.randn([BATCH, channels, res, res], generator=gen).to(torch.float16)
    sigma = torch.tensor(sigmas, dtype=torch.float32)
    labels = torch.randint(0, max(label_dim, 1), [BATCH], generator=gen)
    state = {k: v.clone() for k, v in net.state_dict().items()}

    net.eval()
    with torch.no_grad():
        d_eval, logvar_eval = net(x.float(), sigma, one_hot(labels, label_dim), return_logvar=True)
        d_scalar, logvar_scalar = net(x.float(), torch.tensor(GENERATOR_SIGMA), None, return_logvar=True)
    train_seed = 5000 + index
    net.train()
    with torch.no_grad():
        torch.manual_seed(train_seed)
        d_train, logvar_train = net(x.float(), sigma, one_hot(labels, label_dim), return_logvar=True)
    after = net.state_dict()
    case = dict(
        init_kwargs=kwargs,
        seed=seed,
        init_digest=init_digest,
        state_dict=pack(state, torch.float16),
        x=x,
        sigma=sigma,
        labels=labels,
        eval_D=d_eval,
        eval_logvar=logvar_eval,
        scalar_sigma=GENERATOR_SIGMA,
        scalar_D=d_scalar,
        scalar_logvar=logvar_scalar,
        train_seed=train_seed,
        train_D=d_train,
        train_logvar=logvar_train,
        train_state_digests=[digest(v) for v in after.values()],  # in the order of state_dict["keys"]
    )
    if name == FULL_OUTPUTS_FOR:
        case["train_state_dict"] = pack(after, torch.float32)
    flat = torch.cat([t.reshape(-1) for t in state.values()])  # float16 storage must be lossless
    assert torch.equal(flat, case["state_dict"]["values"].to(torch.float32))
    return case


def full_size_facts(Precond: type) -> dict:
    counts, shapes = {}, {}
    for name in PRESETS:
        with torch.device("meta"):
            net = Precond(**full_kwargs(name))
        counts[name] = sum(p.numel() for p in net.parameters())
        if name in FULL_SHAPES_FOR:
            shapes[name] = [[key, list(t.shape)] for key, t in net.state_dict().items()]
    return dict(init_kwargs={name: full_kwargs(name) for name in PRESETS}, parameter_counts=counts,
                state_dict_shapes=shapes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--official", type=Path, required=True, help="extracted NVlabs/edm2 repository")
    parser.add_argument("--out", type=Path, required=True, help="the .pt file to write")
    parser.add_argument("--commit", default="unknown", help="the official commit, recorded as provenance")
    args = parser.parse_args()
    torch.set_num_threads(1)  # as tests/conftest.py: CPU kernels may sum in another order with more threads
    Precond = import_official(args.official)

    names = list(PRESETS)
    levels = sigma_schedule(2 * len(names))
    cases = {}
    for i, name in enumerate(names):  # each config: one low and one high sigma; img512-xs gets the two ends
        cases[name] = reference_case(Precond, name, i, [levels[i], levels[-1 - i]])
        print(f"{name}: {cases[name]['init_kwargs']}")
    facts = full_size_facts(Precond)
    for name, count in facts["parameter_counts"].items():
        print(f"full-size {name}: {count} parameters")
    payload = dict(
        format=1,
        official_commit=args.commit,
        torch_version=str(torch.__version__),
        cpu_capability=torch.backends.cpu.get_cpu_capability(),
        cases=cases,
        full_size=facts,
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(payload, args.out)
    torch.load(args.out, weights_only=True)  # the tests load it this way
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()

"""The SIM authors' released one-step generator as a simcli generator: `--generator sim-dit-600m` (fetched once into
the Hugging Face cache from maple-research-lab/SIM) or `--generator PATH.pt` (a local copy of that checkpoint).

Facts from their release (maple-research-lab/SIM at 6535530):
- the generator is PixArt-XL-2 at 512 px (models/PixArt.py:195-196; inference.py:75-86: 4 latent channels,
  input_size 64), weights in the checkpoint's 'ema' entry (simcli.teachers.sim_checkpoint);
- one step (inference.py:15-27, models/__init__.py:91-108): x = sigma_init z with sigma_init = 2.5 (their
  --init_sigma default), the network at timestep M - 1 - (index of the table entry nearest sigma_init) = 440 of
  their own table (simcli.nets.sim_noise_table), its input c_in x = x / sqrt(sigma^2 + 1), and
  D = x - sigma F[:, :4] with the unrounded sigma: EDM-form epsilon preconditioning, no guidance;
- prompts go to the T5 tokenizer as given (no lower-casing), 120 tokens padded, the mask passed to T5 and to the
  network (models/__init__.py:59-78); latents decode through the VAE at its scaling factor (:83-88);
- they run in bfloat16 (--dtype bf16): so does simcli on a GPU; float32 elsewhere.

The text encoder and VAE are those of simcli's `pixart-alpha-512` teacher (PixArt-alpha/PixArt-XL-2-512x512: the
T5-v1.1-XXL and sd-vae-ft-ema their README points to), sampled and decoded as for any simcli text-to-image generator
(simcli.sampling.text_to_image), so scores follow the same protocol as a simcli run's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any

import torch

from simcli.errors import UsageError
from simcli.nets.pixart_original_keys import ORIGINAL_ONLY, diffusers_state_dict
from simcli.nets.sim_noise_table import sim_release_bins, sim_release_sigmas
from simcli.nets.train_schedule import training_schedule
from simcli.rundir.layout import STATE_RE
from simcli.teachers.sim_checkpoint import CHECKPOINT_HINT, TABLE_KEY, read_sim_checkpoint

POS_EMBED_TOLERANCE = 1e-4  # the checkpoint's stored sin-cos table against diffusers' recomputed one
TABLE_TOLERANCE = 1e-4  # relative: a stored noise table against sim_release_sigmas (float32, built on any device)


@dataclass(frozen=True)
class SimRelease:
    """A released SIM generator: where it is, what samples it, and its network.

    network   a config in simcli/assets/network_configs (name) or a mapping of that layout (class_name, config,
              scheduler_config, vae_scale_factor, sample_shape, text_tokens)
    """

    name: str
    repo_id: str
    filename: str
    teacher: str
    network: str | dict[str, Any] = field(hash=False)
    sigma_init: float = 2.5


SIM_DIT_600M = SimRelease("sim-dit-600m", "maple-research-lab/SIM", "checkpoint-2024-07-02.pt", "pixart-alpha-512",
                          "pixart-alpha-512")
RELEASES: dict[str, SimRelease] = {SIM_DIT_600M.name: SIM_DIT_600M}
LOCAL_RELEASE = SIM_DIT_600M
"""What a local .pt file given as --generator is read as."""

CHECKPOINT_SUFFIX = ".pt"


def is_sim_release(given: str | Path) -> bool:
    """Whether a --generator argument names a SIM release: its official name (unless a file or folder of that name
    exists: then that is meant) or a .pt checkpoint file other than a simcli run's state-<kimg>.pt."""
    text = str(given)
    if text.lower() in RELEASES and not Path(text).exists():
        return True
    return Path(text).suffix == CHECKPOINT_SUFFIX and STATE_RE.match(Path(text).name) is None


def release_checkpoint(given: str | Path) -> tuple[SimRelease, Path]:
    """(the release, its checkpoint file): the Hub file behind an official name (the cache, else downloaded), or the
    local file given."""
    text = str(given)
    release = RELEASES.get(text.lower())
    if release is None or Path(text).exists():
        return LOCAL_RELEASE, Path(text)
    return release, hub_checkpoint(release)


def hub_checkpoint(release: SimRelease) -> Path:
    """The release's checkpoint from the Hugging Face cache, else downloaded into it; offline or unreachable, one
    line naming the repository, the file and the command that pre-downloads it."""
    from simcli.nets.t2i_extra import require_t2i_packages
    from simcli.store.hub import cached_hub_file, download_command, hf_hub_cache, hub_offline, hub_unreachable

    require_t2i_packages()
    cached = cached_hub_file(release.repo_id, (release.filename,))
    if cached is not None:
        return cached
    reason = hub_offline() or hub_unreachable()
    if reason is None:
        from huggingface_hub import hf_hub_download

        try:
            return Path(hf_hub_download(release.repo_id, release.filename, cache_dir=str(hf_hub_cache())))
        except Exception as exc:  # refused, not found, interrupted: one line
            reason = f"{type(exc).__name__}: {' '.join(str(exc).split())[:160]}"
    raise UsageError(f"{release.name}: {release.filename} of {release.repo_id} is not in the Hugging Face cache "
                     f"{hf_hub_cache()} and cannot be downloaded ({reason}); pre-download it with "
                     f"`{download_command(release.repo_id, files=(release.filename,))}`",
                     hint=f"set HF_HOME (or HF_HUB_CACHE) to the cache that holds it, or pass a copy of the file: "
                          f"--generator PATH/{release.filename}")


def network_record(release: SimRelease) -> dict[str, Any]:
    """The release network's config mapping (module docstring of SimRelease)."""
    if isinstance(release.network, dict):
        return release.network
    return json.loads(files("simcli.assets").joinpath(f"network_configs/{release.network}.json").read_text())


def release_architecture(release: SimRelease) -> dict[str, Any]:
    """The simcli architecture record (kind 'diffusers') of the release's network, unguided."""
    record = network_record(release)
    return {"kind": "diffusers", "class_name": record["class_name"], "config": record["config"],
            "schedule": training_schedule(record["scheduler_config"]), "guidance_scale": 1.0,
            "vae_scale_factor": record["vae_scale_factor"], "sample_shape": record["sample_shape"]}


def load_sim_release(given: str | Path, device: torch.device | str = "cpu") -> tuple[Any, dict[str, Any], Path]:
    """(the generator in eval mode, its metadata as a snapshot's, the checkpoint file): what load_generator returns
    for a simcli snapshot. One-line UsageErrors naming the file for a checkpoint that is not the release's layout."""
    from simcli.nets.registry import network_with_weights

    release, file = release_checkpoint(given)
    original, extras = read_sim_checkpoint(file)
    record = network_record(release)
    _check_original_only(original, record, file)
    dropped = {key: original.pop(key) for key in ORIGINAL_ONLY if key in original}
    converted, unplaced = diffusers_state_dict(original)
    if unplaced:
        raise UsageError(f"{file}: {len(unplaced)} entries are not PixArt-alpha's ({', '.join(unplaced[:4])})",
                         hint=CHECKPOINT_HINT)
    net = network_with_weights(release_architecture(release), {f"transformer.{k}": v for k, v in converted.items()},
                               str(file), what=f"{release.name} network (PixArt-alpha, {record['class_name']})",
                               hint=CHECKPOINT_HINT)
    if "pos_embed" in dropped:
        _check_pos_embed(dropped["pos_embed"], net.network.pos_embed.pos_embed, file)
    if TABLE_KEY in extras:
        _check_table(extras[TABLE_KEY], file)
    net.sigma_bins = sim_release_bins()  # the authors' table, not diffusers' (the same timestep at sigma_init 2.5)
    net.sigma_min, net.sigma_max = float(net.sigma_bins[0]), float(net.sigma_bins[-1])
    device = torch.device(device)
    net = net.to(device).eval().requires_grad_(False)
    if device.type == "cuda":  # the authors' --dtype default
        net.network.to(torch.bfloat16)
    meta = {"architecture": release_architecture(release), "sigma_init": release.sigma_init,
            "spec": {"teacher": release.teacher}, "images_seen": None, "release": release.name,
            "prompts_as_given": True}
    return net, meta, file


def _check_original_only(original: dict[str, torch.Tensor], record: dict[str, Any], file: Path) -> None:
    """Floating-point tensors only; the learned null caption [tokens, caption_channels] when present."""
    odd = [k for k, v in original.items() if not v.is_floating_point()]
    if odd:
        raise UsageError(f"{file}: {len(odd)} tensors are not floating point ({', '.join(odd[:3])})", hint=CHECKPOINT_HINT)
    null = original.get("y_embedder.y_embedding")
    expected = [int(record["text_tokens"]), int(record["config"]["caption_channels"])]
    if null is not None and list(null.shape) != expected:
        raise UsageError(f"{file}: y_embedder.y_embedding is {list(null.shape)}, not {expected}", hint=CHECKPOINT_HINT)


def _check_pos_embed(stored: torch.Tensor, computed: torch.Tensor, file: Path) -> None:
    """The stored pos_embed buffer (what the authors' network adds) must be the sin-cos table diffusers adds."""
    if list(stored.shape) != list(computed.shape):
        raise UsageError(f"{file}: pos_embed is {list(stored.shape)}, not {list(computed.shape)}", hint=CHECKPOINT_HINT)
    gap = float((stored.float() - computed.float().cpu()).abs().max())
    if not gap <= POS_EMBED_TOLERANCE:
        raise UsageError(f"{file}: its pos_embed differs from PixArt-alpha's sin-cos table by up to {gap:.3g}",
                         hint="simcli's PixArt network recomputes that table; this checkpoint's network is another")


def _check_table(stored: torch.Tensor, file: Path) -> None:
    """A stored noise table 'u' (the authors' wrapper buffer, which their loader would use) must be the table
    simcli samples with."""
    table = sim_release_sigmas()
    if list(stored.shape) != list(table.shape) or not torch.allclose(stored.float(), table, rtol=TABLE_TOLERANCE,
                                                                      atol=1e-6):
        raise UsageError(f"{file}: its noise table '{TABLE_KEY}' is not the SIM release's "
                         f"({list(stored.shape)}, top {float(stored.flatten()[0]) if stored.numel() else 'none'})",
                         hint="simcli samples with the table of the authors' inference (simcli.nets.sim_noise_table)")

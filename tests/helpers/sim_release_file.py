"""A file in the layout of the SIM authors' released checkpoint (SIM-DiT-600M), made from a diffusers PixArt transformer.

The layout, from their loader (maple-research-lab/SIM, models/__init__.py:9-12, :38-40, :56): torch.save of
{'ema': state_dict} where the state_dict is their PixArt_alpha wrapper's under DistributedDataParallel: keys
'module.model.' + PixArt-alpha's original names, and 'module.u' (the wrapper's noise table buffer).

The diffusers -> original conversion here is written out name by name, in the opposite direction and independently of
simcli.nets.pixart_original_keys, so a wrong name or a wrong split order there fails the round trip.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from tests.helpers.tiny_pixart import TINY_MAX_TOKENS


def authors_noise_table(steps: int = 1000) -> torch.Tensor:
    """Their table u (M + 1 entries, falling to 0), recomputed in numpy float64 and stored as float32."""
    u = np.zeros(steps + 1)
    for j in range(steps, 0, -1):
        beta = 0.02 - 0.0199 * j / steps
        u[j - 1] = np.sqrt((u[j] ** 2 + 1) / max(1 - beta, 0.001) - 1)
    return torch.from_numpy(u).float()


def original_pixart_state_dict(transformer, null_caption_seed: int = 7) -> dict[str, torch.Tensor]:
    """The transformer's weights under PixArt-alpha's original names, plus the two entries diffusers has no place
    for: pos_embed (the sin-cos table the transformer computes) and y_embedder.y_embedding (random)."""
    sd = {k: v.detach().clone() for k, v in transformer.state_dict().items()}
    out: dict[str, torch.Tensor] = {}

    def both(original: str, diffusers: str) -> None:
        out[original + ".weight"] = sd[diffusers + ".weight"]
        out[original + ".bias"] = sd[diffusers + ".bias"]

    both("x_embedder.proj", "pos_embed.proj")
    both("t_embedder.mlp.0", "adaln_single.emb.timestep_embedder.linear_1")
    both("t_embedder.mlp.2", "adaln_single.emb.timestep_embedder.linear_2")
    both("t_block.1", "adaln_single.linear")
    both("y_embedder.y_proj.fc1", "caption_projection.linear_1")
    both("y_embedder.y_proj.fc2", "caption_projection.linear_2")
    both("final_layer.linear", "proj_out")
    out["final_layer.scale_shift_table"] = sd["scale_shift_table"]
    for n in range(transformer.config.num_layers):
        o, d = f"blocks.{n}", f"transformer_blocks.{n}"
        out[f"{o}.scale_shift_table"] = sd[f"{d}.scale_shift_table"]
        for leaf in ("weight", "bias"):
            out[f"{o}.attn.qkv.{leaf}"] = torch.cat([sd[f"{d}.attn1.to_q.{leaf}"], sd[f"{d}.attn1.to_k.{leaf}"],
                                                     sd[f"{d}.attn1.to_v.{leaf}"]])
            out[f"{o}.cross_attn.kv_linear.{leaf}"] = torch.cat([sd[f"{d}.attn2.to_k.{leaf}"],
                                                                 sd[f"{d}.attn2.to_v.{leaf}"]])
        both(f"{o}.attn.proj", f"{d}.attn1.to_out.0")
        both(f"{o}.cross_attn.q_linear", f"{d}.attn2.to_q")
        both(f"{o}.cross_attn.proj", f"{d}.attn2.to_out.0")
        both(f"{o}.mlp.fc1", f"{d}.ff.net.0.proj")
        both(f"{o}.mlp.fc2", f"{d}.ff.net.2")
    out["pos_embed"] = transformer.pos_embed.pos_embed.detach().clone()
    generator = torch.Generator().manual_seed(null_caption_seed)
    out["y_embedder.y_embedding"] = torch.randn(TINY_MAX_TOKENS, transformer.config.caption_channels, generator=generator)
    return out


def write_sim_checkpoint(path: str | Path, original: dict[str, torch.Tensor], *, table: bool = True,
                         prefix: str = "module.") -> Path:
    """torch.save({'ema': {prefix + 'model.' + name: tensor, prefix + 'u': table}}) at path."""
    ema = {f"{prefix}model.{name}": tensor for name, tensor in original.items()}
    if table:
        ema[f"{prefix}u"] = authors_noise_table()
    path = Path(path)
    torch.save({"ema": ema}, path)
    return path


def tiny_release(pipeline: Path, transformer):
    """A SimRelease for the tiny PixArt pipeline folder: its transformer's config, its scheduler, its T5 and VAE."""
    import json

    from simcli.sampling.sim_release import SimRelease

    config = {k: v for k, v in dict(transformer.config).items() if not k.startswith("_")}
    network = {"class_name": "PixArtTransformer2DModel", "config": json.loads(json.dumps(config)),
               "scheduler_config": json.loads((pipeline / "scheduler" / "scheduler_config.json").read_text()),
               "vae_scale_factor": 2, "sample_shape": [4, 8, 8], "text_tokens": TINY_MAX_TOKENS}
    return SimRelease("sim-dit-600m", "maple-research-lab/SIM", "checkpoint-2024-07-02.pt", f"diffusers:{pipeline}",
                      network)

"""A generator distilled with simcli, as a diffusers pipeline: one network evaluation per image (or one per noise
level of a few-step generator), with the teacher pipeline's own text encoder and VAE.

This file is written into an exported pipeline folder as `pipeline_simcli.py` and imports only torch, diffusers and
the standard library (simcli is not needed to run it). Load the folder with

    from diffusers import DiffusionPipeline
    pipe = DiffusionPipeline.from_pretrained(FOLDER, trust_remote_code=True)
    images = pipe(["a photo of a cat", "a red car"], seed=0).images      # PIL images, seeds 0 and 1

What it computes (the `simcli` record of model_index.json holds the numbers), in simcli's EDM form:

    z_i ~ N(0, I) drawn from its own CPU torch.Generator seeded with seed + i (or generator[i])
    x = sigma_1 z;   for each level k:  x0 = c_skip_k x + c_out_k F(c_in_k x; time_k, prompt)
                                         x  = x0 + sigma_{k+1} eps_k   (few-step generators; eps_k from the same
                                                                         generators, in order)
    image = VAE.decode(x0 / scaling_factor + shift_factor), mapped from [-1, 1] to [0, 1]

F is the network's own prediction (epsilon for PixArt and SD1.5, epsilon or v for the SD UNets, the flow velocity for
SD3, FLUX and SANA), its time a DDPM bin index or 1000 t, and the prompt embedded by the family's own diffusers
pipeline (`encode_prompt`), unguided. The network is the folder's `transformer`, or its `unet` (SD1.5, SDXL).
"""

from __future__ import annotations

import importlib

import torch
from diffusers import DiffusionPipeline
from diffusers.image_processor import VaeImageProcessor
from diffusers.pipelines.pipeline_utils import ImagePipelineOutput
from diffusers.utils import is_transformers_version

TEXT_COMPONENTS = ("tokenizer", "text_encoder", "tokenizer_2", "text_encoder_2", "tokenizer_3", "text_encoder_3")
SEED_MODULUS = 2**32  # simcli reduces seeds as EDM does


def _pack(latents):
    """[B, C, H, W] -> [B, (H/2)(W/2), 4C]: FLUX's 2 x 2 patches as tokens."""
    b, c, h, w = latents.shape
    return latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)


def _unpack(tokens, height, width):
    b, _, packed = tokens.shape
    c = packed // 4
    return tokens.view(b, height // 2, width // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, c, height, width)


def _image_ids(height, width, device, dtype):
    rows = torch.arange(height // 2, device=device, dtype=dtype).repeat_interleave(width // 2)
    cols = torch.arange(width // 2, device=device, dtype=dtype).repeat(height // 2)
    return torch.stack([torch.zeros_like(rows), rows, cols], dim=1)


class SimcliGeneratorPipeline(DiffusionPipeline):
    """A simcli one-step (or few-step) generator: `pipe(prompt, seed=...)` or `pipe(prompt, generator=[...])`."""

    _optional_components = ["transformer", "unet", "vae", *TEXT_COMPONENTS]
    model_cpu_offload_seq = "text_encoder->text_encoder_2->text_encoder_3->transformer->unet->vae"

    def __init__(self, transformer=None, vae=None, tokenizer=None, text_encoder=None, tokenizer_2=None,
                 text_encoder_2=None, tokenizer_3=None, text_encoder_3=None, simcli=None, unet=None):
        super().__init__()
        if not isinstance(simcli, dict):
            raise ValueError("model_index.json has no 'simcli' record: is this a folder simcli exported?")
        if (transformer is None) == (unet is None):
            raise ValueError("the pipeline takes one network: a transformer or a unet")
        given = {"vae": vae, "tokenizer": tokenizer, "text_encoder": text_encoder, "tokenizer_2": tokenizer_2,
                 "text_encoder_2": text_encoder_2, "tokenizer_3": tokenizer_3, "text_encoder_3": text_encoder_3}
        network = unet if transformer is None else transformer
        given = self._referenced(simcli, given, next(network.parameters()).dtype)
        self.register_modules(transformer=transformer, unet=unet, **given)
        self.register_to_config(simcli=simcli)
        self.image_processor = VaeImageProcessor(vae_scale_factor=int(simcli["vae_scale_factor"]))

    @staticmethod
    def _referenced(record, given, dtype):
        """Components the folder does not hold, loaded from the teacher pipeline the record names
        (`components_from`: a Hub repository or a local folder) with diffusers' or transformers' from_pretrained."""
        source = record.get("components_from")
        for name, (library, class_name) in record["components"].items():
            if given.get(name) is not None or source is None:
                continue
            loader = getattr(importlib.import_module(library), class_name)
            options = {"subfolder": name}
            if source.get("revision"):
                options["revision"] = source["revision"]
            if not name.startswith("tokenizer"):  # as torch_dtype would have loaded them: the network's dtype
                new_transformers = library == "transformers" and is_transformers_version(">=", "4.56.0")
                options["dtype" if new_transformers else "torch_dtype"] = dtype
            given[name] = loader.from_pretrained(source["location"], **options)
        missing = [name for name in record["components"] if given.get(name) is None]
        if missing:
            raise ValueError(f"the pipeline lacks {', '.join(missing)}: pass them to from_pretrained")
        return {name: given.get(name) for name in ("vae", *TEXT_COMPONENTS)}

    @property
    def denoiser(self):
        """The generator's network: the transformer, or the unet of SD1.5 and SDXL."""
        return self.transformer if self.transformer is not None else self.unet

    # ------------------------------------------------------------------ text

    def _family_pipeline(self):
        """The teacher family's own diffusers pipeline over these components (for its encode_prompt)."""
        record, family = self.config.simcli, self.config.simcli["family"]
        diffusers = importlib.import_module("diffusers")
        parts = {name: getattr(self, name) for name in ("vae", *TEXT_COMPONENTS) if name in record["components"]}
        pipe_class = getattr(diffusers, record["pipeline_class"])
        if family == "sd15":  # steps_offset=1: the pipeline's own check of old scheduler configs stays quiet
            return pipe_class(unet=self.unet, scheduler=diffusers.EulerDiscreteScheduler(steps_offset=1),
                              safety_checker=None, feature_extractor=None, requires_safety_checker=False, **parts)
        if family == "sdxl":
            return pipe_class(unet=self.unet, scheduler=diffusers.EulerDiscreteScheduler(steps_offset=1),
                              add_watermarker=False, **parts)
        scheduler = diffusers.FlowMatchEulerDiscreteScheduler() if family in ("sd3", "flux") else (
            diffusers.DPMSolverMultistepScheduler())
        return pipe_class(transformer=self.transformer, scheduler=scheduler, **parts)

    @torch.no_grad()
    def encode(self, prompts, device):
        """(embeds [B, L, C], mask [B, L] or None, pooled [B, P] or None) as the family's pipeline embeds prompts."""
        record, family = self.config.simcli, self.config.simcli["family"]
        pipe = self._family_pipeline()
        length = int(record["max_sequence_length"])
        if family.startswith("pixart"):
            embeds, mask, _, _ = pipe.encode_prompt(prompts, do_classifier_free_guidance=False, device=device,
                                                    clean_caption=False, max_sequence_length=length)
            return embeds, mask, None
        if family == "sd3":
            embeds, _, pooled, _ = pipe.encode_prompt(prompts, prompts, prompts, device=device,
                                                      do_classifier_free_guidance=False, max_sequence_length=length)
            return embeds, None, pooled
        if family == "flux":
            embeds, pooled, _ = pipe.encode_prompt(prompts, prompts, device=device, max_sequence_length=length)
            return embeds, None, pooled
        if family == "sana":
            embeds, mask, _, _ = pipe.encode_prompt(prompts, do_classifier_free_guidance=False, device=device,
                                                    clean_caption=False, max_sequence_length=length,
                                                    complex_human_instruction=pipe_default_instruction(pipe))
            return embeds, mask, None
        if family == "sd15":
            embeds, _ = pipe.encode_prompt(prompts, device, 1, False)
            return embeds, None, None
        if family == "sdxl":
            embeds, _, pooled, _ = pipe.encode_prompt(prompts, prompts, device=device, do_classifier_free_guidance=False)
            return embeds, None, pooled
        raise ValueError(f"unknown family {family!r} in the simcli record")

    # ------------------------------------------------------------------ the network

    def network(self, latents, time, embeds, mask, pooled):
        """The network's raw prediction F [B, C, h, w] (float32) for its input latents at its time [B]."""
        record, net = self.config.simcli, self.denoiser
        family, dtype = record["family"], next(net.parameters()).dtype
        embeds = embeds.to(dtype)
        if family.startswith("pixart"):
            micro = {"resolution": None, "aspect_ratio": None}
            if getattr(net, "use_additional_conditions", False):
                factor = int(record["vae_scale_factor"])
                height, width = (int(s) * factor for s in latents.shape[-2:])
                batch = latents.shape[0]
                micro = {"resolution": torch.tensor([height, width], dtype=dtype, device=latents.device).repeat(batch, 1),
                         "aspect_ratio": torch.tensor([height / width], dtype=dtype, device=latents.device).repeat(batch, 1)}
            out = net(latents.to(dtype), encoder_hidden_states=embeds, encoder_attention_mask=mask, timestep=time,
                      added_cond_kwargs=micro, return_dict=False)[0]
            channels = latents.shape[1]
            return (out[:, :channels] if out.shape[1] == 2 * channels else out).float()
        if family == "sd3":
            return net(hidden_states=latents.to(dtype), encoder_hidden_states=embeds, pooled_projections=pooled.to(dtype),
                       timestep=time.to(dtype), return_dict=False)[0].float()
        if family == "flux":
            height, width = latents.shape[-2:]
            text_ids = torch.zeros(embeds.shape[1], 3, device=latents.device, dtype=dtype)
            guidance = None
            if record.get("embedded_guidance") is not None:
                guidance = torch.full((latents.shape[0],), float(record["embedded_guidance"]), device=latents.device)
                guidance = guidance.to(dtype)
            out = net(hidden_states=_pack(latents).to(dtype), encoder_hidden_states=embeds,
                      pooled_projections=pooled.to(dtype), timestep=time.to(dtype),
                      img_ids=_image_ids(height, width, latents.device, dtype), txt_ids=text_ids, guidance=guidance,
                      return_dict=False)[0]
            return _unpack(out.float(), height, width)
        if family == "sana":
            return net(hidden_states=latents.to(dtype), encoder_hidden_states=embeds, encoder_attention_mask=mask,
                       timestep=time.to(dtype), return_dict=False)[0].float()
        if family in ("sd15", "sdxl"):
            added = None
            if family == "sdxl":  # original size = target size = the image's, no crop (the pipeline's defaults)
                factor = int(record["vae_scale_factor"])
                height, width = (int(s) * factor for s in latents.shape[-2:])
                ids = torch.tensor([height, width, 0, 0, height, width], device=latents.device, dtype=dtype)
                added = {"text_embeds": pooled.to(dtype), "time_ids": ids.repeat(latents.shape[0], 1)}
            return net(latents.to(dtype), time, encoder_hidden_states=embeds, added_cond_kwargs=added,
                       return_dict=False)[0].float()
        raise ValueError(f"unknown family {family!r} in the simcli record")

    # ------------------------------------------------------------------ sampling

    @staticmethod
    def _generators(seed, generator, n):
        if generator is not None:
            generators = list(generator) if isinstance(generator, (list, tuple)) else [generator]
            if len(generators) != n:
                raise ValueError(f"{len(generators)} generators for {n} images: pass one per image (simcli's seeds)")
            return generators
        first = 0 if seed is None else int(seed)
        return [torch.Generator("cpu").manual_seed((first + i) % SEED_MODULUS) for i in range(n)]

    @staticmethod
    def _draw(generators, shape, device):
        """One standard normal draw [*shape] from each generator (float32, where the generator is), stacked."""
        draws = [torch.randn(shape, generator=g, dtype=torch.float32, device=g.device) for g in generators]
        return torch.stack(draws).to(device)

    @torch.no_grad()
    def __call__(self, prompt, seed=None, generator=None, num_images_per_prompt=1, output_type="pil",
                 return_dict=True):
        """Images for prompt(s): image i from seed + i (seed 0 by default), or from generator[i] (one
        torch.Generator per image). output_type: "pil", "np" (float in [0, 1], [B, H, W, 3]), "pt" or "latent"."""
        record = self.config.simcli
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        prompts = [p for p in prompts for _ in range(int(num_images_per_prompt))]
        device = self._execution_device
        generators = self._generators(seed, generator, len(prompts))
        embeds, mask, pooled = self.encode(prompts, device)
        shape = tuple(int(s) for s in record["latent_shape"])
        z = self._draw(generators, shape, device)
        x0 = None
        for k, step in enumerate(record["steps"]):
            if k == 0:
                x = float(step["sigma"]) * z
            else:
                x = x0 + float(step["sigma"]) * self._draw(generators, shape, device).to(x0.dtype)
            time_dtype = torch.int64 if record["time_dtype"] == "int64" else torch.float32
            time = torch.full((x.shape[0],), step["network_time"], dtype=time_dtype, device=device)
            coefficient = [torch.full((x.shape[0], 1, 1, 1), float(step[key]), dtype=torch.float32, device=device)
                           for key in ("c_in", "c_skip", "c_out")]
            x = x.to(torch.float32)
            raw = self.network(coefficient[0] * x, time, embeds, mask, pooled)
            x0 = coefficient[1] * x + coefficient[2] * raw
        if output_type == "latent":
            images = x0
        else:
            config = self.vae.config
            shift = float(getattr(config, "shift_factor", None) or 0.0)
            param = next(self.vae.parameters())
            decoded = self.vae.decode(x0.to(param.device, param.dtype) / float(config.scaling_factor) + shift,
                                      return_dict=False)[0]
            images = self.image_processor.postprocess(decoded.float(), output_type=output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images,)
        return ImagePipelineOutput(images=images)


def pipe_default_instruction(pipe):
    """SanaPipeline's default complex human instruction (its __call__'s default)."""
    import inspect

    return inspect.signature(type(pipe).__call__).parameters["complex_human_instruction"].default

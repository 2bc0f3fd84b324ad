"""The usage text of a single-file export of a text-to-image generator (the model card's 'How to use' section,
written as a title line and '##' sections, the form render_model_card's usage text takes). Pure text."""

from __future__ import annotations

from typing import Any

from simcli.teachers.hub_teachers import HUB_TEACHERS

_FLOW = """One-step generation in the flow form these networks use (x_t = (1 - t) x0 + t z): with z standard normal
latents, x_t = t_init * z and the network's velocity v at time t_init, the image latents are x0 = x_t - t_init * v
(t_init = {t_init:.6g}; a few-step generator renoises to each of `generator_times` and repeats). The network runs
once per step, without classifier-free guidance{guidance}. diffusers' pipelines start from x_t = z at t = 1, so
their schedulers do not reproduce this."""

_DDPM = """One-step generation in EDM form: D(sigma_init * z; sigma_init) with z standard normal latents and
sigma_init = {sigma_init:g}, the network called at the training timestep nearest to sigma_init, unguided; a
diffusers scheduler does not reproduce this."""


def teacher_location(teacher: str | None) -> str:
    """Where the teacher pipeline loads from: its Hub repository, or a placeholder for a local pipeline."""
    hub = HUB_TEACHERS.get(teacher or "")
    return hub.repo_id if hub is not None else "PATH/OR/REPO/OF/THE/TEACHER/PIPELINE"


def single_file_usage(metadata: dict[str, Any], file_name: str, pipeline_class: str | None) -> str:
    """The usage text for the file `file_name` with the export's metadata (simcli.export.single_file); pipeline_class:
    the diffusers pipeline its network goes into, None when diffusers cannot load the layout from a single file."""
    teacher = teacher_location(metadata.get("teacher"))
    network, layout, component = metadata["network_class"], metadata["layout"], metadata["component"]
    if pipeline_class is not None:
        load = f"""## Loading it with diffusers

```python
from diffusers import {network}, {pipeline_class}

{component} = {network}.from_single_file("{file_name}", config="{teacher}", subfolder="{component}")
pipe = {pipeline_class}.from_pretrained("{teacher}", {component}={component})
```

Tools that read the teacher's original checkpoint, such as ComfyUI, see the same tensor names (simcli tests the
diffusers route only)."""
    else:
        load = f"""## Loading it

diffusers has no single-file loader for {network}: the file is for code that reads the original checkpoint, such as
the PixArt repository's `PixArt` / `PixArtMS` classes. It leaves out {', '.join(f'`{n}`' for n in
metadata.get('left_out', []))} (a fixed table every loader recomputes, and the training-only null caption): load it
with `strict=False`. `simcli export --format diffusers` writes a folder `DiffusionPipeline.from_pretrained` loads."""
    guidance = (f"; its guidance embedding takes {metadata['embedded_guidance']:g}, as in training"
                if "embedded_guidance" in metadata else "")
    how = (_FLOW.format(t_init=metadata["t_init"], guidance=guidance) if "t_init" in metadata
           else _DDPM.format(sigma_init=metadata["sigma_init"]))
    return f"""# Using this generator

`{file_name}` holds the generator's {network} weights under the names of the teacher family's original
single-file checkpoint (`{layout}`), in the snapshot's precision; its metadata (JSON values) records
`sigma_init`{', `t_init`' if 't_init' in metadata else ''}, the noise levels, the teacher, the method and the run
spec's `spec_sha256`. The text encoders and the VAE are not in the file: they are the teacher pipeline's
(`{teacher}`).

{load}

## Sampling

{how}

simcli samples the run's own snapshot exactly: `simcli sample --generator RUN_DIR/{metadata['source_file']} --prompt
"a photo of a cat" --out samples/`; for the families it covers, `simcli export --format diffusers` writes a pipeline
folder that makes the same images.
"""

"""Exporting a distilled generator for use outside simcli: files other tools load, a Hugging Face model card for the
exported folder, and the upload of that folder to the Hub.

- `edm_file`: an EDM-type generator (EDM, EDM2, the digits teacher's) as one safetensors file in NVIDIA's key layout,
  with the architecture record and simcli's settings in its metadata;
- `single_file`: a generator of a PixArt, SD3, FLUX or SD/SDXL teacher as one safetensors file in the teacher's
  original single-file key layout (`single_file_<family>`: the mappings, `single_file_keys`: their moves), which
  diffusers' from_single_file loads (all but PixArt);
- `diffusers_pipeline`: a generator of a diffusers teacher (PixArt, SD3, FLUX, SANA) as a diffusers pipeline folder
  that `DiffusionPipeline.from_pretrained(DIR, trust_remote_code=True)` loads without simcli;
- `model_card`: the folder's README.md (YAML front matter, then the teacher, method, metrics, command, loading);
- `folder`: the exported folder, written into a temporary folder beside it and renamed into place;
- `hub`: `--push-to-hub`, one commit of the whole folder.
"""

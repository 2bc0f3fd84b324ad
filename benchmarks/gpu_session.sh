#!/bin/bash
# The GPU checks of a session that is lent a device machine (one H200; 15 minutes of device time in all), as one
# prepared script. Results go to $OUT (the device tool brings them back) for benchmarks/results/.
#
# Prepare here first (the device machine cannot reach PyPI; its python3 has torch, transformers, typer, rich,
# safetensors, pyyaml, but not pydantic or diffusers):
#   .venv/bin/pip download --only-binary=:all: --python-version 3.12 -d wheels pydantic diffusers open_clip_torch
#   echo wheels/ >> .git/info/exclude
# then: run(command="bash benchmarks/gpu_session.sh", carry=["wheels"], timeout_s=540)
#
# What it measures (each step bounded, so one failure does not spend the budget):
#   1. the CUDA tests (pytest -m gpu);
#   2. CIFAR-10 DDPM++ at batch 256: sec/kimg, peak memory and the overhead ratio in fp32, tf32 and bf16, with and
#      without torch.compile and activation checkpointing (benchmarks/bench_distill.py);
#   3. PixArt-XL-2's real transformer dimensions with random weights (no download): iteration time and memory in
#      bf16, checkpointing on and off, at micro-batch 8.
set -uo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD
python3 -m pip install -q --no-index --find-links wheels pydantic diffusers open_clip_torch 2>&1 | tail -2
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt"

timeout 90 python3 -m pytest -q -m gpu tests -p no:cacheprovider > "$OUT/gpu-tests.txt" 2>&1
echo "gpu tests: exit $?" >> "$OUT/gpu-tests.txt"

timeout 240 python3 benchmarks/bench_distill.py --arch ddpmpp --batch 256 --batch-gpu 256 --device cuda \
    --precision fp32 tf32 bf16 --compile off on --checkpointing off on --iterations 5 --warmup 2 --breakdown \
    --out bench_distill-ddpmpp-h200 > "$OUT/bench-ddpmpp.log" 2>&1
cp benchmarks/results/bench_distill-ddpmpp-h200.* "$OUT/" 2>/dev/null

timeout 150 python3 - > "$OUT/pixart-xl-random.txt" 2>&1 <<'EOF'
"""PixArt-XL-2-512's transformer dimensions with random weights: one SIM iteration's time and peak memory."""
import copy, time
import torch
from diffusers import PixArtTransformer2DModel
from simcli.config.spec import LognormalNoise, LossSpec
from simcli.distill.batches import BatchPlan
from simcli.distill.precision import Precision
from simcli.distill.steps import Context, generator_update, make_generator_loss, online_update
from simcli.distill.streams import IterationStreams, online_phase
from simcli.nets.pixart import PixArtDenoiser, pixart_architecture
from simcli.distill.conditions import ClassLabels
from simcli.nets.text_condition import TextCondition

config = dict(sample_size=64, num_layers=28, attention_head_dim=72, num_attention_heads=16, in_channels=4,
              out_channels=8, patch_size=2, cross_attention_dim=1152, caption_channels=4096,
              norm_type="ada_norm_single", num_embeds_ada_norm=1000, norm_elementwise_affine=False, norm_eps=1e-6,
              use_additional_conditions=False)
dev = torch.device("cuda")
schedule = {"num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "linear"}

class RandomPrompts(ClassLabels):
    def draw(self, n, rng, device):
        return TextCondition(torch.randn(n, 120, 4096, device=device, generator=rng) * 0.1,
                             torch.ones(n, 120, dtype=torch.long, device=device))

for checkpointing in (False, True):
    teacher = PixArtDenoiser(PixArtTransformer2DModel(**config), schedule).to(dev).eval().requires_grad_(False)
    generator, online = copy.deepcopy(teacher).requires_grad_(True), copy.deepcopy(teacher)
    for net in (teacher, generator, online):
        net.set_activation_checkpointing(checkpointing)
    p = Precision("bf16", dev)
    plan = BatchPlan(2.5, 8, 8, (4, 64, 64), 0, dev, condition_source=RandomPrompts(0))
    opt_g = torch.optim.Adam(generator.parameters(), lr=5e-6, betas=(0.0, 0.999))
    opt_o = torch.optim.Adam(online.parameters(), lr=5e-6, betas=(0.0, 0.999))
    loss = make_generator_loss(LossSpec(), "none", 4 * 64 * 64)
    noise = LognormalNoise(p_mean=-2.0, p_std=2.0, sigma_min=0.01, sigma_max=156.6155)
    torch.cuda.reset_peak_memory_stats()
    times = []
    with p.tf32():
        for step in range(4):
            ctx = Context(plan, IterationStreams(0, step, dev), autocast=p.autocast)
            torch.cuda.synchronize(); t0 = time.perf_counter()
            online_update(generator, online, opt_o, ctx, online_phase(0), noise)
            generator_update(generator, online, teacher, opt_g, loss, ctx, noise)
            torch.cuda.synchronize(); times.append(time.perf_counter() - t0)
    params = sum(q.numel() for q in teacher.parameters())
    print(f"pixart-xl random params={params} micro_batch=8 bf16 checkpointing={checkpointing} "
          f"sec/iter={sorted(times[1:])[1]:.3f} peak_gib={torch.cuda.max_memory_allocated() / 2**30:.1f}")
    del teacher, generator, online, opt_g, opt_o
    torch.cuda.empty_cache()
EOF
ls -la "$OUT"

#!/bin/bash
# The GPU checks of a session that is lent a device machine (one H100 or H200; 15 minutes of device time in all,
# the machine's start included), as one prepared script of about 9 minutes. Results go to $OUT, which the device
# tool brings back (at most 8 files: this script packs its result files into results.tgz beside session.log); copy the .md/.json into benchmarks/results/.
#
# Prepare here first. The device machine cannot reach PyPI; its python3 (3.12) has torch, numpy, typer, rich,
# safetensors, pyyaml, pillow, matplotlib, pytest, huggingface-hub, but not pydantic or diffusers. Download the
# versions this venv runs, without their dependencies (a plain `pip download` would pull torch, beyond the 64 MiB
# that travels), for Python 3.12 on x86-64 Linux:
#   .venv/bin/pip download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 \
#       -d wheels $(.venv/bin/pip freeze | grep -iE '^(pydantic|pydantic[-_]core|annotated[-_]types|typing[-_]inspection|typing[-_]extensions|diffusers|importlib[-_]metadata)==')
#   echo wheels/ >> .git/info/exclude
# then: run(command="bash benchmarks/gpu_session.sh", carry=["wheels"], timeout_s=590)
# (DEADLINE_S=N bash benchmarks/gpu_session.sh bounds the whole script to N seconds; default 530.)
#
# What it measures (each step bounded by `timeout` and by the time left, so one failure does not spend the budget;
# $OUT/session.log has every step's output, exit code and wall time):
#   0. EDM2-XS of ImageNet-512 (issue 20; random weights on 4 x 64 x 64 latents, 1000 classes) in bf16, batch 64 in
#      micro-batches of 32, activation checkpointing off and on: sec/kimg and peak memory of a SIM iteration
#      (benchmarks/bench_distill.py) -> bench_distill-edm2-xs-<gpu>.{md,json};
#   1. simcli's memory plan against the CUDA peak (issue 18): PixArt-XL-2-512's transformer (0.61B parameters, its
#      shipped config, random weights, no download) in bf16, micro-batch 1 and 4, activation checkpointing on and
#      off, the teacher guided at 4.5 (as a run) and unguided (as the plan traces it): the plan part by part, the
#      measured weights, weights + Adam and peak (torch.cuda.max_memory_allocated), the ratio, and sec/iteration of
#      simcli's own SIM updates (benchmarks/plan_vs_cuda.py) -> plan_vs_cuda-<gpu>.{md,json};
#   2. the CUDA tests (pytest -m gpu over the test files that carry the marker);
#   3. CIFAR-10 DDPM++ at batch 256 in one micro-batch: sec/kimg, peak memory and the overhead ratio against a
#      minimal loop in bf16, tf32 and fp32, with and without activation checkpointing, with --breakdown
#      (benchmarks/bench_distill.py) -> bench_distill-ddpmpp-<gpu>.{md,json};
#   4. the same with torch.compile, bf16, no checkpointing, in the time left -> bench_distill-ddpmpp-<gpu>-compile.*
set -uo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
LOG="$OUT/session.log"
DEADLINE=${DEADLINE_S:-530}
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
: > "$LOG"

step() {  # step NAME CAP_S COMMAND...: COMMAND bounded by CAP_S and by the time left before DEADLINE
    local name=$1 cap=$2 left start rc
    shift 2
    left=$((DEADLINE - SECONDS - 5))
    if ((cap > left)); then cap=$left; fi
    if ((cap < 20)); then
        echo "== $name: skipped, ${left}s left" | tee -a "$LOG"
        return
    fi
    echo "== $name (limit ${cap}s): $*" >> "$LOG"
    start=$SECONDS
    timeout -k 10 "$cap" "$@" >> "$LOG" 2>&1
    rc=$?
    echo "== $name: exit $rc after $((SECONDS - start))s$( ((rc == 124 || rc == 137)) && echo ' (timed out)')" \
        | tee -a "$LOG"
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >> "$LOG" 2>&1
GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 | tr '[:upper:]' '[:lower:]' \
    | tr -cs 'a-z0-9' '-' | sed 's/^-*//; s/-*$//')
GPU=${GPU:-cuda}
step pip-install 90 python3 -m pip install -q --no-index --find-links wheels pydantic diffusers
step versions 30 python3 -c "import torch, pydantic, diffusers; print('torch', torch.__version__, 'cuda', \
torch.version.cuda, torch.cuda.get_device_name(0), '| pydantic', pydantic.__version__, '| diffusers', diffusers.__version__)"

step bench-edm2-xs 150 python3 benchmarks/bench_distill.py --arch edm2-xs --batch 64 --batch-gpu 32 --device cuda \
    --precision bf16 --compile off --checkpointing off on --iterations 5 --warmup 2 --out "$OUT/bench_distill-edm2-xs-$GPU"

step plan-vs-cuda 170 python3 benchmarks/plan_vs_cuda.py --device cuda --batch 1 4 --checkpointing on off \
    --guidance-scale 4.5 1 --precision bf16 --warmup 2 --iterations 3 --out "$OUT/plan_vs_cuda-$GPU"

mapfile -t GPU_TESTS < <(grep -rl --include='*.py' 'mark\.gpu' tests | sort)
step gpu-tests 90 python3 -m pytest -q -m gpu -p no:cacheprovider "${GPU_TESTS[@]}"

step bench-ddpmpp 150 python3 benchmarks/bench_distill.py --arch ddpmpp --batch 256 --batch-gpu 256 --device cuda \
    --precision bf16 tf32 fp32 --compile off --checkpointing off on --iterations 5 --warmup 2 --breakdown \
    --out "$OUT/bench_distill-ddpmpp-$GPU"

step bench-ddpmpp-compile 180 python3 benchmarks/bench_distill.py --arch ddpmpp --batch 256 --batch-gpu 256 \
    --device cuda --precision bf16 --compile on --checkpointing off --iterations 5 \
    --out "$OUT/bench_distill-ddpmpp-$GPU-compile"

echo "== total ${SECONDS}s" | tee -a "$LOG"
for f in "$OUT"/plan_vs_cuda-*.md "$OUT"/bench_distill-*.md; do
    [ -f "$f" ] && { echo; cat "$f"; }
done
# The device tool brings back at most 8 files: the results travel as one archive (unpack it into benchmarks/results/).
(cd "$OUT" && tar czf results.tgz -- *.md *.json 2>/dev/null && rm -f -- *.md *.json)
ls -la "$OUT"

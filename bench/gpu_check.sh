#!/usr/bin/env bash
# GPU check for a machine WITHOUT network access that has torch, transformers and accelerate but no
# trl, webdataset, datasets, dill, multiprocess or ffmpeg (the GPU machine lent to this project).
#
#   here (CPU, network):  bench/gpu_check.sh prepare [KIT]   # KIT (default gpu_kit/, git-ignored, < 64 MiB):
#                                                           #   wheels, the tests' fixture shards, their
#                                                           #   tensor cache, the tiny judge's config,
#                                                           #   ffmpeg (xz), videos and a judge to score them
#   on the GPU machine:   bench/gpu_check.sh run [KIT] [OUT] # installs the wheels (no index), trains the
#                                                           #   reward, sft and dpo judges on cuda from the
#                                                           #   cache, times judge batches, a step of the
#                                                           #   qwen2_5_omni backbone and whole-video
#                                                           #   scoring; results in OUT
#
# Training never decodes a video there: AVBENCH_FFMPEG=/bin/false makes any attempt fail loudly, and
# the tensor cache (AVBENCH_CACHE) holds every input the training reads. Each run's metrics.json
# records the device in words (device_name) and train_pairs_per_s; judge_throughput.md holds
# windows/s per batch size on the GPU and, for comparison, on the machine's CPU in the same run.
# Whole-video scoring (score_throughput.md) is `eval score --device cuda` as a user runs it: the kit's
# ffmpeg decodes (imageio-ffmpeg's static binary, xz-compressed: its 68 MB wheel is over what the
# machine takes in), the machine's cores find the faces, the judge gets the windows of many files per
# batch; x real time and where the time goes (decode, face finding, judge). It needs OpenCV there
# (the crops; its 62 MB wheel does not fit beside ffmpeg) and says so when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

cmd=${1:?usage: bench/gpu_check.sh prepare|run [KIT] [OUT]}
kit=${2:-gpu_kit}
STEPS=${STEPS:-250}

# what the GPU machine lacks (the versions of this venv; braceexpand is webdataset's one dependency
# beyond numpy / pyyaml); its own transformers and accelerate are used as they are
WHEELS=(trl==1.16.0 webdataset==1.0.2 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 braceexpand peft==0.22.0)

case "$cmd" in
prepare)
    PY=${PYTHON:-.venv/bin/python}
    rm -rf "$kit" && mkdir -p "$kit/wheels"
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 -d "$kit/wheels" "${WHEELS[@]}"
    # the tests' fixture shards (generated talking boxes, 2 s windows) and the tiny judge config, then
    # one CPU pass of each objective fills the tensor cache the GPU run reads
    "$PY" -m tests.train_fixtures "$kit/shards" --sources 16 --seconds 2 --windows 2 --pairs 2
    "$PY" -c "import sys; from tests.train_fixtures import write_tiny_config as w; w(sys.argv[1], logging_steps=50, \
save_steps=100000, eval_steps=100000)" "$kit/tiny.yaml"
    for obj in reward sft dpo; do
        AVBENCH_CACHE="$kit/cache" "$PY" -m train --dim lip_sync --objective "$obj" --shards "$kit/shards" \
            --config "$kit/tiny.yaml" --run "$kit/cpu_$obj" --max-steps 1
    done
    rm -rf "$kit"/cpu_*
    # whole-video scoring: the ffmpeg this venv decodes with, 24 talking clips of 4-8 s and a judge
    # with the lip_sync judge's geometry (random weights: throughput only, its scores mean nothing)
    "$PY" -c "import lzma, shutil, sys; from perturb.media import ffmpeg_exe; \
shutil.copyfileobj(open(ffmpeg_exe(), 'rb'), lzma.open(sys.argv[1], 'wb', preset=6))" "$kit/ffmpeg.xz"
    "$PY" -c "import sys; from pathlib import Path; from tests.eval_fixtures import make_export, make_video; \
k = Path(sys.argv[1]); (k / 'videos').mkdir(parents=True, exist_ok=True); [make_video(k / 'videos' / f'clip{i:02d}.mp4', 4 + i % 5, seed=i, size=160) for i in range(24)]; \
make_export(k / 'score_judge', crop='mouth', window_seconds=2.0, head='monotone', use_pooled=False, sync_aux_weight=1.0)" "$kit"
    du -sh "$kit"
    ;;
run)
    out=${3:-${OUT:-gpu_out}}
    mkdir -p "$out"
    PY=${PYTHON:-python3}
    "$PY" -m pip install -q --no-index --no-deps "$kit"/wheels/*.whl \
        || "$PY" -m pip install -q --no-index --no-deps --break-system-packages "$kit"/wheels/*.whl
    export AVBENCH_FFMPEG=/bin/false AVBENCH_CACHE="$kit/cache"
    "$PY" -c "import torch; assert torch.cuda.is_available(), 'no GPU here'; print(torch.cuda.get_device_name(0))"
    for obj in reward sft dpo; do
        "$PY" -m train --dim lip_sync --objective "$obj" --shards "$kit/shards" --config "$kit/tiny.yaml" \
            --run "$out/gpu_$obj" --max-steps "$STEPS" 2>&1 | tail -3
        "$PY" -c "import json,sys; m=json.load(open(sys.argv[1])); print(sys.argv[2], m['device_name'], \
'train_pairs_per_s', m['train_pairs_per_s'], 'train_time_s', m['train_time_s'], 'val', m['val_pairwise_accuracy'])" \
            "$out/gpu_$obj/metrics.json" "$obj"
    done
    { "$PY" bench/judge_throughput.py --judge "$out/gpu_reward/model" --device cuda --batch-sizes 1 8 64 256 1024
      echo
      "$PY" bench/judge_throughput.py --judge "$out/gpu_reward/model" --device cpu --batch-sizes 1 8 64; } \
        | tee "$out/judge_throughput.md"
    # the qwen2_5_omni backbone on its tiny random thinker (tests/qwen_omni_fixtures.py): seconds and peak
    # memory per reward step in bf16 at 1 / 4 / 16 pairs, at the tests' geometry and at the paper's, and
    # on the CPU in the same run; needs this machine's transformers to have Qwen2.5-Omni (5.24 as pinned)
    # and torchvision: without them it says why and the check goes on
    { "$PY" bench/qwen_omni_step.py --device cuda --dtype bfloat16 --batches 1 4 16 --geometry tiny
      echo
      "$PY" bench/qwen_omni_step.py --device cuda --dtype bfloat16 --batches 1 4 16 --geometry paper
      echo
      "$PY" bench/qwen_omni_step.py --device cpu --dtype float32 --batches 1 4 --geometry tiny; } 2>&1 \
        | tee "$out/qwen_omni_step.md" || echo "qwen_omni step check failed: see $out/qwen_omni_step.md"
    # whole-video scoring on the GPU (module comment): the judge on cuda, one file at a time in one
    # process against every core decoding and finding faces with the windows batched to the GPU
    if "$PY" -c "import cv2" 2>/dev/null; then
        "$PY" -c "import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], 'wb'))" \
            "$kit/ffmpeg.xz" "$out/ffmpeg" && chmod +x "$out/ffmpeg"
        AVBENCH_FFMPEG="$out/ffmpeg" "$PY" bench/bench_score.py --scorer "$kit/score_judge" --device cuda \
            --batch-size 256 "$kit"/videos/*.mp4 2>&1 | tee "$out/score_throughput.md" \
            || echo "whole-video scoring check failed: see $out/score_throughput.md"
    else
        echo "whole-video scoring skipped: no OpenCV on this machine (pip install opencv-python-headless)" \
            | tee "$out/score_throughput.md"
    fi
    ;;
*)
    echo "usage: bench/gpu_check.sh prepare|run [KIT] [OUT]" >&2
    exit 2
    ;;
esac

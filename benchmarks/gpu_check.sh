#!/usr/bin/env bash
# The one GPU run of issue 9, prepared and rehearsed on CPU (tests/test_gpu_check.py).
#
# On a lent GPU machine, from the repository root (about 8 minutes on one H200, by
# estimate: it has not run on a GPU yet):
#
#     RESULTS=$OUT benchmarks/gpu_check.sh
#
# what it measures, full-size `pascal-r50` model on synthetic 473 x 473 episodes:
#   1. training_speed.py: stage 1 for BASE_STEPS and stage 2 for STEPS steps in fp32 and
#      bf16, each with --compile off and on: s/step, episodes/s, peak memory and the
#      stage-2 loss of the first and last logged window (does it fall?);
#   2. torchrun --nproc_per_node 1 ... train meta: the DDP path (NCCL on CUDA, gloo on CPU)
#      for DDP_STEPS steps from the stage-1 checkpoint of a DDP_STEPS-step `train base`;
#   3. evaluation_speed.py: evaluation episodes/s with and without the feature cache, and
#      the projected PASCAL-5i / COCO-20i protocol times.
# It writes training_speed.json, evaluation_speed.json, ddp_metrics.csv and gpu_check.log
# into RESULTS (default benchmarks/results/<device>/, where benchmarks/report.py reads
# them: copy the JSON there and run `benchmarks/report.py` to fill docs/benchmarks.md's
# cuda tables).
#
# Every size is a variable; the CPU rehearsal (what the test runs, under a minute):
#
#     DEVICE=cpu PROFILE=cpu-tiny SIZE=64 STEPS=3 BASE_STEPS=2 DDP_STEPS=2 AMP=off \
#       COMPILE=off WORKERS=0 EVAL_ARGS="--backbone tiny --width 32 --episodes 1 --seeds 2 \
#       --protocol-episodes 4 --shots 1 --threads 1 --synthetic-images 60" \
#       SYNTHETIC_TRAIN=200 SYNTHETIC_VAL=60 EXTRA_SET="data.min_class_area=40" \
#       RESULTS=/tmp/check benchmarks/gpu_check.sh
set -euo pipefail

PYTHON=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
PROFILE=${PROFILE:-pascal-r50}
SIZE=${SIZE:-473}
STEPS=${STEPS:-150}           # stage-2 steps per setting (precision x compile)
BASE_STEPS=${BASE_STEPS:-30}  # stage-1 steps per setting
AMP=${AMP:-off bf16}
COMPILE=${COMPILE:-off on}
DDP_STEPS=${DDP_STEPS:-30}
WORKERS=${WORKERS:-4}
SYNTHETIC_TRAIN=${SYNTHETIC_TRAIN:-400}
SYNTHETIC_VAL=${SYNTHETIC_VAL:-100}
EVAL_ARGS=${EVAL_ARGS:-}
EXTRA_SET=${EXTRA_SET:-}       # more KEY=VALUE settings for every training command
RESULTS=${RESULTS:-benchmarks/results/$DEVICE}

mkdir -p "$RESULTS"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu-check-XXXXXX")
trap 'rm -rf "$WORK"' EXIT
LOG="$RESULTS/gpu_check.log"
: >"$LOG"
export PYTHONUNBUFFERED=1

say() { echo "[gpu_check $(date +%H:%M:%S)] $*" | tee -a "$LOG"; }
run() { say "\$ $*"; "$@" 2>&1 | tee -a "$LOG"; }

# The synthetic benchmark rendered at SIZE, in a folder of its own (made on first use).
DATA=(--set data.dataset=synthetic --set "data.root=$WORK/data"
      --set "data.synthetic_image_size=$SIZE" --set "data.train_size=$SIZE"
      --set "data.eval_size=$SIZE" --set "data.synthetic_images_train=$SYNTHETIC_TRAIN"
      --set "data.synthetic_images_val=$SYNTHETIC_VAL")
for setting in $EXTRA_SET; do DATA+=(--set "$setting"); done

say "device $DEVICE, profile $PROFILE, ${SIZE} px, stage 1 $BASE_STEPS / stage 2 $STEPS steps"
run "$PYTHON" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
if [ "$DEVICE" = cuda ]; then
    if ! "$PYTHON" -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then
        say "DEVICE=cuda, but torch sees no CUDA device here (the CPU rehearsal: this script's header)"
        exit 2
    fi
    run nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
fi

# 1. Training speed: every precision with and without torch.compile, side by side.
# shellcheck disable=SC2086
run "$PYTHON" benchmarks/training_speed.py --profile "$PROFILE" --device "$DEVICE" --amp $AMP \
    --compile $COMPILE --workers "$WORKERS" --steps "$STEPS" --base-steps "$BASE_STEPS" \
    "${DATA[@]}" --out "$RESULTS/training_speed.json"

# 2. The DDP path through torchrun (`python -m torch.distributed.run` is torchrun), one
# process: NCCL on CUDA.
SHORT=(--set "train.base_learner_steps=$DDP_STEPS" --set "train.max_steps=$DDP_STEPS"
       --set "train.base_learner_val_every=$DDP_STEPS" --set "train.val_every=$DDP_STEPS"
       --set "train.checkpoint_every=$DDP_STEPS" --set "train.log_every=$(( (DDP_STEPS + 4) / 5 ))"
       --set "train.base_learner_val_images=8" --set "train.selection_split=none")
run "$PYTHON" -m hdmnet_core train base --profile "$PROFILE" --device "$DEVICE" \
    --workers "$WORKERS" --out "$WORK/base" "${DATA[@]}" "${SHORT[@]}"
run "$PYTHON" -m torch.distributed.run --standalone --nproc_per_node 1 -m hdmnet_core train meta \
    --profile "$PROFILE" --device "$DEVICE" --workers "$WORKERS" --base-ckpt "$WORK/base/last.pt" \
    --out "$WORK/meta-ddp" "${DATA[@]}" "${SHORT[@]}"
cp "$WORK/meta-ddp/metrics.csv" "$RESULTS/ddp_metrics.csv"

# 3. Evaluation with and without the feature cache (full-size model unless EVAL_ARGS says).
# shellcheck disable=SC2086
run "$PYTHON" benchmarks/evaluation_speed.py --device "$DEVICE" --size "$SIZE" \
    --data-root "$WORK/eval-data" --out "$RESULTS/evaluation_speed.json" $EVAL_ARGS

say "done: $(ls "$RESULTS" | tr '\n' ' ')"

#!/usr/bin/env bash
# H2 on real CIFAR-10 (JPEG), the seed as the unit (issue 13): camstat:resnet20, lambda 0 vs 0.2 (mean loss,
# Grad-CAM at layer3), seeds 0-5, on a CPU budget: 8,000 training images (class-balanced, the same subset for
# every seed), 8 epochs, held out: a fixed 2,000 of the test images (CIFAR-10 has no val split, so the per-epoch
# and the final evaluation are both on these). The pilot (README, "Pilot") had 5,000 images and 6 epochs.
# Run from the repository root: `bash studies/cifar10-resnet20-h2/run.sh [STEP...]`, STEP in base0 means h2
# faith report (default: all). Every step resumes: rerun the script after an interruption and only what is missing runs.
# DEVICE=cuda for a GPU; LANES=N runs N trainings side by side.
set -euo pipefail
DATA=imagefolder:../shared/data/cifar10-jpeg
RUNS=${RUNS:-runs}
STORE=${STORE:-store}
OUT=${OUT:-studies/cifar10-resnet20-h2}
STEPS=("${@:-base0 means h2 faith report}")
STEPS=(${STEPS[*]})
want() { [[ " ${STEPS[*]} " == *" $1 "* ]]; }
SWEEP=(--model camstat:resnet20 --data "$DATA" --normalize cifar --limit 8000 --eval-limit 2000 --epochs 8
       --batch-size 128 --device "${DEVICE:-cpu}" --out "$RUNS/c10-h2")
MEANS="$STORE/c10-h2-lambda0-s0-train.zarr"

# Seed 0 of the baseline arm first: its correct training maps give the class means of the regularised arm.
want base0 && camstat sweep "${SWEEP[@]}" --lambda 0 --seeds 0
want means && camstat extract --model camstat:resnet20 --checkpoint "$RUNS/c10-h2/lambda0/s0/model.pt" \
  --data "$DATA" --split train --limit 8000 --methods gradcam --store "$MEANS" --device "${DEVICE:-cpu}" --resume
# The 11 other runs in LANES processes (default 4), each run a one-run `camstat sweep` (it skips a complete run
# and resumes an interrupted one), seeds outermost, so an interrupted sweep leaves both arms with about the same
# seeds; rerunning the step finishes only what is missing.
SEEDS=${SEEDS:-0 1 2 3 4 5}  # 6 seeds: with 5 the exact sign-flip p cannot go below 2/2^5 = 0.0625
lane() {  # lane K of L: runs K, K+L, K+2L, ... of the (seed, lambda) list
  local i=0
  for s in $SEEDS; do
    for lam in 0 0.2; do
      (( i++ % $2 == $1 )) && camstat sweep "${SWEEP[@]}" --lambda $lam --loss mean --means "$MEANS" --seeds $s
    done
  done
  return 0
}
if want h2; then
  LANES=${LANES:-4}
  pids=()
  for ((k = 0; k < LANES; k++)); do lane $k "$LANES" & pids+=($!); done
  for pid in "${pids[@]}"; do wait "$pid"; done
fi
# Faithfulness per arm and seed (issue 15): each run's maps of the same 2,000 test images (extract's seeded,
# class-balanced --limit subset) in RUN/test.zarr, where `camstat compare`/`report` look; ROAD on FAITH_N of them
# (class-balanced by label, seeded: the same images for every run).
FAITH_N=${FAITH_N:-1000}
if want faith; then
  for run in "$RUNS"/c10-h2/*/s*; do
    camstat extract --model camstat:resnet20 --checkpoint "$run/model.pt" --data "$DATA" --normalize cifar \
      --split test --limit 2000 --methods gradcam --store "$run/test.zarr" --device "${DEVICE:-cpu}" --resume
    camstat faithfulness "$run/test.zarr" --method gradcam --limit "$FAITH_N" --road-noise 0.01 --seed 0 \
      --jobs "${JOBS:-2}" --json "$run/faithfulness.json"
  done
fi
if want report; then
  camstat compare "$RUNS/c10-h2" --json "$OUT/compare.json"
  camstat report "$RUNS/c10-h2" --out "$OUT" --title "CIFAR-10 ResNet-20 H2 (6 seeds)"
fi

#!/usr/bin/env bash
# H2 on real CIFAR-10 (JPEG), the seed as the unit (issue 13): camstat:resnet20, lambda 0 vs 0.2 (mean loss,
# Grad-CAM at layer3), seeds 0-4, on a CPU budget: 8,000 training images (class-balanced, the same subset for
# every seed), 8 epochs, held out: a fixed 2,000 of the test images (CIFAR-10 has no val split, so the per-epoch
# and the final evaluation are both on these). The pilot (README, "Pilot") had 5,000 images and 6 epochs.
# Run from the repository root: `bash studies/cifar10-resnet20-h2/run.sh [STEP...]`, STEP in base0 means h2
# report (default: all). Every step resumes: rerun the script after an interruption and only what is missing runs.
# DEVICE=cuda for a GPU; JOBS=N trains N runs of a seed at a time (at most 2: the two arms).
set -euo pipefail
DATA=imagefolder:../shared/data/cifar10-jpeg
RUNS=${RUNS:-runs}
STORE=${STORE:-store}
OUT=studies/cifar10-resnet20-h2/pilot
STEPS=("${@:-base0 means h2 report}")
STEPS=(${STEPS[*]})
want() { [[ " ${STEPS[*]} " == *" $1 "* ]]; }
SWEEP=(--model camstat:resnet20 --data "$DATA" --normalize cifar --limit 8000 --eval-limit 2000 --epochs 8
       --batch-size 128 --device "${DEVICE:-cpu}" --out "$RUNS/c10-h2")
MEANS="$STORE/c10-h2-lambda0-s0-train.zarr"

# Seed 0 of the baseline arm first: its correct training maps give the class means of the regularised arm.
want base0 && camstat sweep "${SWEEP[@]}" --lambda 0 --seeds 0
want means && camstat extract --model camstat:resnet20 --checkpoint "$RUNS/c10-h2/lambda0/s0/model.pt" \
  --data "$DATA" --split train --limit 8000 --methods gradcam --store "$MEANS" --device "${DEVICE:-cpu}" --resume
# Seeds outermost, so an interrupted sweep leaves both arms with the same seeds.
if want h2; then
  for s in 0 1 2 3 4; do
    camstat sweep "${SWEEP[@]}" --lambda 0,0.2 --loss mean --means "$MEANS" --seeds $s --jobs "${JOBS:-1}"
  done
fi
if want report; then
  camstat compare "$RUNS/c10-h2" --json "$OUT/compare.json"
  camstat report "$RUNS/c10-h2" --out "$OUT" --title "CIFAR-10 ResNet-20 H2 (5 seeds)"
fi

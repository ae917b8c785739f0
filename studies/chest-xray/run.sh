#!/usr/bin/env bash
# Chest X-ray study: camstat:resnet20 on a class-balanced PneumoniaMNIST (28 x 28 grayscale).
# Run from the repository root: `bash studies/chest-xray/run.sh [STEP...]`, STEP in base means h2 faith report h1
# (default: all, in that order). Every step is resumable: rerun it after an interruption.
#
# Step "base" (issue 12): plain cross-entropy (lambda 0), seeded, trained as MedMNIST's own benchmark does
# (no augmentation: a flip would mirror the anatomy, and constant composition is what this study is about),
# normalised by the train split's own mean and sd (0.564, 0.174).
# Steps "means", "h2", "faith", "report" (issues 13, 15): H2 with the seed as the unit; see README.md. Step "h1"
# (issues 11, 12): H1 by class and by composition cluster, and error detection; see h1/README.md.
set -euo pipefail
DATA="npz:../shared/data/pneumoniamnist/pneumoniamnist.npz?classes=normal,pneumonia"
RUNS=${RUNS:-runs}
STORE=${STORE:-store}
OUT=${OUT:-studies/chest-xray}
STEPS=("${@:-base means h2 faith report h1}")
STEPS=(${STEPS[*]})
want() { [[ " ${STEPS[*]} " == *" $1 "* ]]; }

if want base; then
  camstat train-reg --model camstat:resnet20 --data "$DATA" --lambda 0 --epochs 30 --seed 0 \
    --normalize 0.564,0.174 --no-augment --batch-size 128 --lr 0.1 --device cpu \
    --out "$RUNS/chest-base" --json "$RUNS/chest-base/train.json"
fi

# Class means of the mean loss: the baseline's correct train-split Grad-CAM maps (layer3, 7 x 7).
if want means; then
  camstat extract --model camstat:resnet20 --checkpoint "$RUNS/chest-base/model.pt" --data "$DATA" --split train \
    --methods gradcam --store "$STORE/chest-base-train.zarr" --device cpu --resume
fi

# The H2 sweep: the baseline's recipe, 10 epochs (the CPU budget; cosine schedule over those 10), full training
# split (2,428 images), per-epoch evaluation on val (270), final evaluation on test (468). Six arms x seeds 0-5:
# mean loss at lambda 0 (plain training), 0.05, 0.2, 1; variance loss at 0.2; spread loss at 0.05 (their lambdas
# put lambda * L_cam at the mean arm's 0.2 * L_cam on the baseline's maps: variance 0.053 ~ mean 0.056, spread
# 0.23 ~ 4 x mean). The 36 runs go in LANES processes side by side (default 6: one per arm), seeds outermost, each run a
# one-run `camstat sweep` (it skips a complete run and resumes an interrupted one from its last epoch), so an
# interrupted sweep leaves every arm with about the same seeds and rerunning the step finishes only what is missing.
SWEEP=(--model camstat:resnet20 --data "$DATA" --normalize 0.564,0.174 --no-augment --batch-size 128 --lr 0.1
       --epochs 10 --device "${DEVICE:-cpu}" --out "$RUNS/chest-h2")
MEANS=(--means "$STORE/chest-base-train.zarr")
ARMS=("0 mean" "0.05 mean" "0.2 mean" "1 mean" "0.2 variance" "0.05 spread")
one_run() {  # one_run LAMBDA LOSS SEED
  local extra=()
  [[ $2 == mean ]] && extra=("${MEANS[@]}")  # the variance and spread losses need no class means
  camstat sweep "${SWEEP[@]}" --lambda "$1" --loss "$2" "${extra[@]}" --seeds "$3"
}
SEEDS=${SEEDS:-0 1 2 3 4 5}  # 6 seeds: with 5 the exact sign-flip p cannot go below 2/2^5 = 0.0625
lane() {  # lane K of L: runs K, K+L, K+2L, ... of the (seed, arm) list
  local i=0
  for s in $SEEDS; do
    for arm in "${ARMS[@]}"; do
      (( i++ % $2 == $1 )) && one_run $arm $s
    done
  done
  return 0
}
if want h2; then
  LANES=${LANES:-6}
  pids=()
  for ((k = 0; k < LANES; k++)); do lane $k "$LANES" & pids+=($!); done
  for pid in "${pids[@]}"; do wait "$pid"; done
fi

# ---- Faithfulness per arm and seed (issue 15) --------------------------------------------------------------------
# Each run's test store at RUN/test.zarr (the place `camstat compare` looks), scored by ROAD on all 468 test images
# (seeded imputation noise); then compare/report show every arm's faithfulness with the seed as the unit.
if want faith; then
  for run in "$RUNS"/chest-h2/*/s*; do
    camstat extract --model camstat:resnet20 --checkpoint "$run/model.pt" --data "$DATA" --split test \
      --methods gradcam --store "$run/test.zarr" --device cpu --resume
    camstat faithfulness "$run/test.zarr" --method gradcam --road-noise 0.01 --seed 0 --jobs 2 \
      --json "$run/faithfulness.json"
  done
fi

# Every arm against the lambda-0 arm, paired by seed; then the report (tables, learning curves, arm figure).
if want report; then
  camstat compare "$RUNS/chest-h2" --json "$OUT/compare.json"
  camstat report "$RUNS/chest-h2" --out "$OUT" --title "Chest X-ray (PneumoniaMNIST) ResNet-20 H2"
fi

# ---- H1 and error detection (issues 11, 12) ---------------------------------------------------------------------
# Step 1: extract the test split (468 images; maps, logits and the head input) and a train-split reference with both
# methods (train accuracy is 1.0, so every train map is a correct map for the class means of detect-errors).
# Step 2: H1 by correctness, group-level consistency by class, and H1 within composition clusters; X-rays here have
# no object masks, so --features mask does not apply. Outputs: studies/chest-xray/h1/ (tables.py renders its README).
H1=${H1:-studies/chest-xray/h1}
if want h1; then
  TEST="$STORE/chest-base-test.zarr"
  REF="$STORE/chest-base-train2.zarr"
  mkdir -p "$H1"
  for split in test train; do
    out=$TEST; [ "$split" = train ] && out=$REF
    camstat extract --model camstat:resnet20 --checkpoint "$RUNS/chest-base/model.pt" --data "$DATA" --split $split \
      --methods gradcam,gradcam++ --store "$out" --device cpu --resume
  done
  # Both methods in one command: the H1 verdict's Holm family is the two methods (SPEC 4).
  BOTH=gradcam,gradcam++
  camstat consistency "$TEST" --by correct --method $BOTH --control permuted --json "$H1/correct.json"
  camstat consistency "$TEST" --by class --method $BOTH --json "$H1/class.json"
  for f in thumbnail hog embedding; do
    camstat consistency "$TEST" --by cluster --features $f --clusters auto --method $BOTH --json "$H1/cluster-$f-auto.json"
    camstat consistency "$TEST" --by cluster --features $f --clusters 4 --method $BOTH --json "$H1/cluster-$f-k4.json"
    camstat consistency "$TEST" --by cluster --features $f --clusters auto --within-class --method $BOTH \
      --control permuted --json "$H1/cluster-$f-auto-within.json"
  done
  for m in gradcam gradcam++; do
    # Step 3: can the maps tell errors, better than confidence? Class means from the train split, never the test's.
    camstat detect-errors "$TEST" --reference "$REF" --method $m --json "$H1/detect-$m.json"
  done
  # Step 4: reports (both methods each): H1 with leave-one-out means; with the train reference and the detect-errors
  # section; H1 within composition clusters of the model's own features, clustered within each predicted class
  # (class and composition both held constant). README: python studies/chest-xray/h1/tables.py (reads the JSON only).
  camstat report "$TEST" --out "$H1/report" --title "Chest X-ray (PneumoniaMNIST, ResNet-20): H1"
  # With --reference the report adds the detect-errors section (and measures H1 against the train split's means).
  camstat report "$TEST" --reference "$REF" --out "$H1/report-errors" \
    --title "Chest X-ray: H1 against train-split means, and error detection"
  camstat report "$TEST" --by cluster --features embedding --clusters auto --within-class \
    --out "$H1/report-cluster-embedding" --title "Chest X-ray: H1 within composition clusters (embedding, within class)"
fi

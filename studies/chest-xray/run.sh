#!/usr/bin/env bash
# Chest X-ray study (issue 12): camstat:resnet20 on a class-balanced PneumoniaMNIST (28 x 28 grayscale).
# Run from the repository root. Step 1, the baseline: plain cross-entropy (lambda 0), seeded, trained as
# MedMNIST's own benchmark does (no augmentation: a flip would mirror the anatomy, and constant composition
# is what this study is about), normalised by the train split's own mean and sd (0.564, 0.174).
set -euo pipefail
DATA="npz:../shared/data/pneumoniamnist/pneumoniamnist.npz?classes=normal,pneumonia"
RUNS=${RUNS:-runs}

camstat train-reg --model camstat:resnet20 --data "$DATA" --lambda 0 --epochs 30 --seed 0 \
  --normalize 0.564,0.174 --no-augment --batch-size 128 --lr 0.1 --device cpu \
  --out "$RUNS/chest-base" --json "$RUNS/chest-base/train.json"

# ---- H1 and error detection (issues 11, 12) ---------------------------------------------------------------------
# Step 1: extract the test split (468 images; maps, logits and the head input) and a train-split reference with both
# methods (train accuracy is 1.0, so every train map is a correct map for the class means of detect-errors).
# Step 2: H1 by correctness, group-level consistency by class, and H1 within composition clusters; X-rays here have
# no object masks, so --features mask does not apply. Outputs: studies/chest-xray/h1/ (tables.py renders its README).
STORE=${STORE:-store}
H1=${H1:-studies/chest-xray/h1}
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

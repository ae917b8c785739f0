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

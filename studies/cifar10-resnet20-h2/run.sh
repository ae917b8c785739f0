#!/usr/bin/env bash
# H2 pilot on real CIFAR-10 (JPEG): camstat:resnet20, lambda 0 vs 0.2 (loss "mean", Grad-CAM at layer3),
# 3 seeds per arm, on a budget that fits a 2-core CPU: 5,000 training images (class-balanced, the same subset for
# every seed), 6 epochs, 2,000 held-out test images. Run from the repository root.
set -euo pipefail
DATA=imagefolder:../shared/data/cifar10-jpeg
COMMON=(--model camstat:resnet20 --data "$DATA" --normalize cifar --limit 5000 --eval-limit 2000 --epochs 6
        --batch-size 128 --device "${DEVICE:-cpu}")
OUT=studies/cifar10-resnet20-h2

# Baseline arm (lambda 0); seed 0's correct training maps give the class means of the regularised arm.
for seed in 0 1 2; do
  camstat train-reg "${COMMON[@]}" --lambda 0 --seed $seed --out runs/h2-base-s$seed
done
camstat extract --model camstat:resnet20 --checkpoint runs/h2-base-s0/model.pt --data "$DATA" --split train \
  --limit 5000 --methods gradcam --store store/h2-base-s0-train.zarr --resume
for seed in 0 1 2; do
  camstat train-reg "${COMMON[@]}" --lambda 0.2 --loss mean --means store/h2-base-s0-train.zarr --seed $seed \
    --out runs/h2-reg-s$seed
done
camstat compare runs/h2-reg-s0 runs/h2-reg-s1 runs/h2-reg-s2 --vs runs/h2-base-s0 runs/h2-base-s1 runs/h2-base-s2 \
  --names "lambda=0.2,lambda=0" --json $OUT/compare.json
camstat report runs/h2-reg-s0 runs/h2-reg-s1 runs/h2-reg-s2 --vs runs/h2-base-s0 runs/h2-base-s1 runs/h2-base-s2 \
  --names "lambda=0.2,lambda=0" --out $OUT --title "CIFAR-10 ResNet-20 H2 pilot"

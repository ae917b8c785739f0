#!/usr/bin/env bash
# H1 on real CIFAR-10 (JPEG): are the Grad-CAM / Grad-CAM++ maps of correctly classified test images more
# consistent (closer to their class's mean map of correct images, leave-one-out) than those of misclassified ones?
# Budget for a 2-core CPU: camstat:resnet20 trained 8 epochs on 20,000 training images (class-balanced subset);
# all 10,000 test images analysed. Controls: the whole pipeline under the null (correctness permuted within class,
# references rebuilt, 200 times), and randomised weights (Adebayo 2018).
# Run from the repository root.
set -euo pipefail
DATA=imagefolder:../shared/data/cifar10-jpeg
OUT=studies/cifar10-resnet20-h1
camstat train-reg --model camstat:resnet20 --data "$DATA" --normalize cifar --lambda 0 --epochs 8 --limit 20000 \
  --eval-limit 5000 --seed 0 --device "${DEVICE:-cpu}" --out runs/c10-r20-base
camstat extract --model camstat:resnet20 --checkpoint runs/c10-r20-base/model.pt --data "$DATA" --split test \
  --methods gradcam,gradcam++ --store store/c10-r20-test.zarr --resume --json $OUT/extract.json
# Randomised-weights control: the same architecture with seeded random weights, same images and normalisation.
camstat extract --model camstat:resnet20 --data "$DATA" --split test --normalize cifar \
  --methods gradcam,gradcam++ --store store/c10-r20-random.zarr --resume --json $OUT/extract-random.json
# H1 for both methods (one verdict family: the primary metric dist, Holm over the two methods), the whole
# pipeline under the null 200 times (--control permuted, the default) and the randomised-weights control.
# results.json holds, per method, exactly the record `camstat consistency --json` gives.
camstat report store/c10-r20-test.zarr --random-store store/c10-r20-random.zarr --primary dist --null-repeats 200 \
  --out $OUT --title "CIFAR-10 ResNet-20: H1 (consistency of correct vs incorrect Grad-CAMs)"

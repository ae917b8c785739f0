#!/usr/bin/env bash
# Two questions a reviewer asks of H1 on real CIFAR-10 (JPEG), camstat:resnet20 of studies/cifar10-resnet20-h1
# (8 epochs on 20,000 training images):
#  1. detect-errors: do the test images' Grad-CAM / Grad-CAM++ consistency scores (against class means of the
#     *train* split's correct maps) tell errors from correct predictions better than, or in addition to, the
#     model's own confidence (max softmax probability, logit margin, predictive entropy)?
#  2. faithfulness: do the maps show what the model uses? ROAD (Rong et al. 2022) MoRF/LeRF on 2,000 test images
#     (seeded, class-stratified), against random maps and the class-mean map.
# Run from the repository root after studies/cifar10-resnet20-h1/run.sh made runs/c10-r20-base/model.pt and
# store/c10-r20-test.zarr. ~40 min on 2 busy CPU cores (faithfulness dominates).
set -euo pipefail
DATA=imagefolder:../shared/data/cifar10-jpeg
OUT=studies/cifar10-resnet20-errors
# The reference: the same model's correct maps of 10,000 training images (class-balanced subset).
camstat extract --model camstat:resnet20 --checkpoint runs/c10-r20-base/model.pt --data "$DATA" --split train \
  --limit 10000 --methods gradcam,gradcam++ --store store/c10-r20-train.zarr --resume --json $OUT/extract-train.json
for method in gradcam gradcam++; do
  camstat detect-errors store/c10-r20-test.zarr --reference store/c10-r20-train.zarr --method $method \
    --folds 5 --seed 0 --json $OUT/detect-$method.json
done
camstat faithfulness store/c10-r20-test.zarr --method gradcam,gradcam++ --limit 2000 --road-noise 0.01 --seed 0 \
  --jobs 2 --json $OUT/faithfulness.json
# README tables, generated from the JSON above
python $OUT/tables.py $OUT
# The full report: H1 against the train-split class means, the detect-errors section (same numbers as the JSON
# above), the faithfulness section of the scored store, figures (ROC, risk-coverage, MoRF/LeRF curves).
camstat report store/c10-r20-test.zarr --reference store/c10-r20-train.zarr --method gradcam,gradcam++ \
  --control none --permutations 999 --seed 0 --out $OUT/report \
  --title "CIFAR-10 ResNet-20: error detection and faithfulness (H1 against train-split class means)"

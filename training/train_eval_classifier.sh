#!/bin/sh
# The classifier that configs/eval_iqothnccd_classifier.yaml evaluates: synthetic IQ-OTH/NCCD-like
# slices (seeded), then a ResNet-18 trained from scratch on them (configs/iqothnccd_resnet18_small.yaml).
# Run from the repository root; PYTHON defaults to python.
set -e
PYTHON=${PYTHON:-python}
$PYTHON training/make_synthetic.py iqothnccd data/iqothnccd_synthetic --cases 150 75 150 --seed 0
nice -n 10 $PYTHON training/train_classification.py --config configs/iqothnccd_resnet18_small.yaml --no-progress

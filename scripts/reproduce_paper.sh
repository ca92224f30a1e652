#!/usr/bin/env bash
# The paper's four settings (Xiong et al. 2025, Tables 1-3), one after another, on a GPU machine.
# Resumable: stage=all skips every stage whose artifact already matches the config, so rerunning
# this script after a kill continues where it stopped. Extra arguments go to every run, e.g.
#   scripts/reproduce_paper.sh paths.data_dir=/data trainer.devices=1
set -euo pipefail
for exp in cifar10_vgg16 cifar10_resnet20 cifar100_vgg16 cifar100_resnet20; do
  python -m lowlat.run stage=all experiment="$exp" "$@"
  python -m lowlat.report "runs/$exp"
done

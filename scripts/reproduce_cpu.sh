#!/usr/bin/env bash
# The same pipeline at CPU scale on the shared CIFAR-10 JPEG copy (quarter-width VGG-16, few
# epochs; see conf/experiment/cifar10_cpu.yaml), then the report and the Phase II ablation.
# Resumable like reproduce_paper.sh. Writes runs/cifar10_cpu/ and copies the small outputs
# (tables, figures, results) to results/cifar10_cpu/.
set -euo pipefail
export LOWLAT_CIFAR10=${LOWLAT_CIFAR10:-../shared/data/cifar10-jpeg.tar.gz}
start=$(date +%s)
python -m lowlat.run stage=all experiment=cifar10_cpu "$@"
python -m lowlat.report runs/cifar10_cpu --paper cifar10_vgg16
mkdir -p results/cifar10_cpu
cp runs/cifar10_cpu/results.csv runs/cifar10_cpu/results.json results/cifar10_cpu/
cp runs/cifar10_cpu/report/*.md runs/cifar10_cpu/report/*.png results/cifar10_cpu/
echo "wall time: $(( $(date +%s) - start )) s" | tee results/cifar10_cpu/wall_time.txt

#!/usr/bin/env bash
# The paper's pipeline at CPU scale on the shared CIFAR-10 JPEG copy (quarter-width VGG-16, few
# epochs; conf/experiment/cifar10_cpu.yaml), then the report and the Phase II ablation.
# Resumable: a stage whose artifact exists is skipped (delete it, or pass force=true, to redo).
# LWC at T = 64 costs 8x the T = 8 calibration per iteration, so on a CPU it runs with fewer,
# smaller iterations (20 x 128 images instead of 100 x 1024); the command says so.
# Writes runs/cifar10_cpu/ and copies the small outputs to results/cifar10_cpu/.
set -euo pipefail
export LOWLAT_CIFAR10=${LOWLAT_CIFAR10:-../shared/data/cifar10-jpeg.tar.gz}
run=runs/cifar10_cpu
lr() { python -m lowlat.run experiment=cifar10_cpu "$@"; }
start=$(date +%s)
[ -f $run/ann.pt ] || lr stage=ann
[ -f $run/qcann.pt ] || lr stage=phase1
[ -f $run/ratenorm.pt ] || lr stage=phase1 phase1.activation=ratenorm
[ -f $run/snn_T8.pt ] || lr stage=phase2 'phase2.timesteps=[2,4,8]'
[ -f $run/snn_T64.pt ] || lr stage=phase2 'phase2.timesteps=[64]' \
  phase2.lwc.iterations=20 phase2.lwc.batch_size=128 'phase2.methods=[lmpc,lmpc+lwc]'
lr stage=eval
python scripts/phase2_ablation.py $run --timesteps 2 4 --out results/cifar10_cpu
python -m lowlat.report $run --paper cifar10_vgg16
mkdir -p results/cifar10_cpu
cp $run/results.csv $run/results.json results/cifar10_cpu/
cp $run/report/*.md $run/report/*.png results/cifar10_cpu/
echo "wall time of this invocation: $(( $(date +%s) - start )) s" | tee results/cifar10_cpu/wall_time.txt

#!/usr/bin/env bash
# The paper's pipeline at CPU scale on the shared CIFAR-10 JPEG copy (quarter-width VGG-16, few
# epochs; conf/experiment/cifar10_cpu.yaml), then the report. These are the exact commands behind
# results/cifar10_cpu/. Resumable: a stage whose artifact exists is skipped (delete it to redo).
# Calibration cost grows with T (every LWC iteration runs the layers below for T steps), so on a
# 2-core CPU the larger T get fewer images and iterations; each command says what it uses.
set -euo pipefail
export LOWLAT_CIFAR10=${LOWLAT_CIFAR10:-../shared/data/cifar10-jpeg.tar.gz}
run=runs/cifar10_cpu
lr() { python -m lowlat.run experiment=cifar10_cpu "$@"; }
start=$(date +%s)
[ -f $run/ann.pt ] || lr stage=ann
[ -f $run/qcann.pt ] || lr stage=phase1
[ -f $run/snn_T4.pt ] || lr stage=phase2 'phase2.timesteps=[2,4]'
[ -f $run/snn_T8.pt ] || lr stage=phase2 'phase2.timesteps=[8]' phase2.calib_samples=512 \
  phase2.lwc.iterations=15 phase2.lwc.batch_size=128
[ -f $run/snn_T64.pt ] || lr stage=phase2 'phase2.timesteps=[64]' phase2.calib_samples=256 \
  phase2.lwc.iterations=10 phase2.lwc.batch_size=64 'phase2.methods=[lmpc,lmpc+lwc]'
lr stage=eval 'eval.timesteps=[1,2,4,8,16]' \
  'eval.methods=[phase1,opti,opt,unbiased,maxnorm,robustnorm,lmpc,lwc,lmpc+lwc]'
python -m lowlat.report $run --paper cifar10_vgg16
mkdir -p results/cifar10_cpu
cp $run/results.csv $run/results.json results/cifar10_cpu/
cp $run/report/*.md $run/report/*.png results/cifar10_cpu/
echo "wall time of this invocation: $(( $(date +%s) - start )) s"

#!/usr/bin/env bash
# The paper's pipeline at CPU scale on the shared CIFAR-10 JPEG copy (quarter-width VGG-16, few
# epochs; conf/experiment/cifar10_cpu.yaml), then the report. These are the exact commands behind
# results/cifar10_cpu/. Every choice is made on the validation split (5000 training images held
# out); the test split is read once, by the final `stage=eval`. Resumable: a stage whose artifact
# exists is skipped (delete it to redo).
set -euo pipefail
export LOWLAT_CIFAR10=${LOWLAT_CIFAR10:-../shared/data/cifar10-jpeg.tar.gz}
run=runs/cifar10_cpu
res=results/cifar10_cpu
lr() { python -m lowlat.run experiment=cifar10_cpu "$@"; }
start=$(date +%s)
mkdir -p $res
[ -f $run/ann.pt ] || lr stage=ann
# Phase I: BatchNorm training or frozen during fine-tuning, chosen on validation.
[ -f $run/qcann.pt ] || lr stage=phase1 phase1.freeze_bn=false
mkdir -p runs/cifar10_cpu_bnfrozen && cp -n $run/ann.pt runs/cifar10_cpu_bnfrozen/
[ -f runs/cifar10_cpu_bnfrozen/qcann.pt ] || \
  lr stage=phase1 phase1.freeze_bn=true experiment_name=cifar10_cpu_bnfrozen
python scripts/phase1_bn_ablation.py $run runs/cifar10_cpu_bnfrozen --out $res
# Phase II defaults of the lowlat recipe, chosen on validation (2560 of the 5000 images).
[ -f $res/phase2_ablation_cifar10_cpu.md ] || python scripts/phase2_ablation.py $run \
  --timesteps 2 --val-batches 20 --lwc-iterations 30 --lwc-batch 256 --out $res
# CPU budget of this session: calibration at T = 2 and 4 only, evaluation up to T = 8, no
# Rate-Norm ANN (its row is left out of eval.methods).
lr stage=phase2 'phase2.timesteps=[2,4]'
# The final table: every method on the full validation and test splits.
lr stage=eval 'eval.timesteps=[1,2,4,8]' 'phase2.timesteps=[2,4]' \
  'eval.methods=[phase1,opti,opt,unbiased,maxnorm,robustnorm,robustnorm_all,lmpc,lwc,lmpc+lwc,lowlat-lmpc,lowlat-lwc,lowlat]'
python -m lowlat.report $run --paper cifar10_vgg16
cp $run/results.csv $run/results.json $res/
cp $run/report/*.md $run/report/*.png $res/
echo "wall time of this invocation: $(( $(date +%s) - start )) s"

#!/usr/bin/env bash
# One prepared device run (issue #13): fits GPU_CHECK_BUDGET seconds of wall time (default 540 =
# 9 min on one H100, data decoding included) and writes JSON into OUT_DIR as soon as each item is
# measured, so a run cut short still returns what it measured. In this order:
#   a1/a2  scripts/bench_snn.py --device cuda, vgg16 then resnet20, T = 1 2 4 8 32: SNN(T)/(T x ANN)
#          and images/s, against spikingjelly 2.0 when installed (a3: the fused scan, T = 4 8 32);
#   b      one training epoch of full-width vgg16 on CIFAR-10 through trainer=gpu (bf16-mixed,
#          channels-last): seconds/epoch, achieved TFLOP/s and its share of the bf16 dense peak;
#   c      a shortened cifar10_vgg16 paper run: ann + phase1 with as many epochs as the remaining
#          time allows (stated in c_plan.json), phase2 at T = 2, 4, eval (results.csv/json);
#   d      scripts/bench_finetune.py on c's lowlat SNN, T = 2 4: seconds a lowlat-ft step, plain
#          against the compiled neuron kernels (Triton) and those with bf16.
# Every step runs under `timeout`; <step>.status.json records its exit code and seconds.
#
#   scripts/gpu_check.sh [OUT_DIR]          # default: $OUT, else ./gpu_check_out
#   GPU_CHECK_DRY=1 scripts/gpu_check.sh D  # the same logic on the CPU in about a minute (tests)
# Environment: PYTHON (default python; lowlat and torch importable), LOWLAT_CIFAR10 (the
# cifar10-jpeg.tar.gz; default shared/data/ in or beside the repository), GPU_CHECK_BUDGET.
set -uo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
OUT_DIR=$(mkdir -p "${1:-${OUT:-gpu_check_out}}" && cd "${1:-${OUT:-gpu_check_out}}" && pwd)
PY=${PYTHON:-python}
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" WANDB_MODE=offline PYTHONUNBUFFERED=1
DRY=${GPU_CHECK_DRY:-0}
BUDGET=${GPU_CHECK_BUDGET:-$([ "$DRY" = 1 ] && echo 300 || echo 540)}
START=$SECONDS
RUN_DIR=${GPU_CHECK_RUN_DIR:-/tmp/gpu_check_run}  # artifacts (large) stay out of OUT_DIR
for d in "${LOWLAT_CIFAR10:-}" "$ROOT/shared/data/cifar10-jpeg.tar.gz" \
         "$ROOT/../shared/data/cifar10-jpeg.tar.gz"; do
  [ -n "$d" ] && [ -f "$d" ] && DATA=$d && break
done
DATA=${DATA:-missing-cifar10-jpeg.tar.gz}

left() { echo $((BUDGET - (SECONDS - START))); }

# step NAME CAP_SECONDS CMD...: run CMD under timeout min(CAP, time left - 15 s), log, status JSON
step() {
  local name=$1 cap=$2 t0=$SECONDS rc
  shift 2
  local t=$(($(left) - 15))
  ((cap < t)) && t=$cap
  if ((t < 20)); then
    printf '{"step": "%s", "status": "skipped", "reason": "%s s left"}\n' "$name" "$(left)" \
      >"$OUT_DIR/$name.status.json"
    return 0
  fi
  echo "== $name (timeout ${t}s, $(left)s left)"
  timeout --kill-after=10 "$t" "$@" >"$OUT_DIR/$name.log" 2>&1
  rc=$?
  printf '{"step": "%s", "rc": %d, "timed_out": %s, "seconds": %d, "timeout_s": %d}\n' \
    "$name" "$rc" "$([ $rc = 124 ] || [ $rc = 137 ] && echo true || echo false)" \
    $((SECONDS - t0)) "$t" >"$OUT_DIR/$name.status.json"
  tail -n 3 "$OUT_DIR/$name.log"
}

if [ "$DRY" = 1 ]; then
  DEV=cpu SNN_T=(1 2) FUSED_T=(2) P2_T='[2]' SNN_ARGS=(--width 0.0625 --batch 4 --repeats 1 --sj-timesteps --threads 1)
  EPOCH_ARGS=(--limit-batches 2 data=digits model=small_cnn trainer.accelerator=cpu)
  PAPER=(experiment=tiny ann.epochs=1 phase1.epochs=1 'eval.methods=[opti,lmpc]'
         'eval.timesteps=[2]' phase2.calib_samples=32 phase2.lwc.iterations=1)
  FT_ARGS=(--timesteps 2 --batch 8 --steps 2 --repeats 1 --variants plain fused)
else
  DEV=cuda SNN_T=(1 2 4 8 32) FUSED_T=(4 8 32) P2_T='[2,4]' SNN_ARGS=(--batch 128 --repeats 3 --chunk 8 --sj-timesteps 4 8)
  EPOCH_ARGS=(data=cifar10_folder "data.root=$DATA")
  PAPER=(experiment=cifar10_vgg16 data=cifar10_folder "data.root=$DATA" logger=csv
         'eval.methods=[phase1,opti,opt,unbiased,maxnorm,robustnorm,lmpc,lwc,lmpc+lwc,lowlat]'
         'eval.timesteps=[2,4,8,16,32]' eval.limit_batches=20 eval.fused=true
         phase2.calib_samples=512 phase2.lwc.iterations=20)
  FT_ARGS=(--timesteps 2 4 --variants plain fused fused+bf16 bf16)
fi
"$PY" - <<EOF >"$OUT_DIR/env.json" 2>&1
import json, torch, platform
print(json.dumps({"torch": torch.__version__, "cuda": torch.cuda.is_available(),
  "device": torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor(),
  "dry": "$DRY" == "1", "budget_s": $BUDGET, "data": "$DATA"}))
EOF

# (a) simulation speed, one model per call so that each lands as soon as it is measured
step a1_bench_snn_vgg16 120 "$PY" scripts/bench_snn.py --device "$DEV" --models vgg16 \
  --timesteps "${SNN_T[@]}" "${SNN_ARGS[@]}" --out "$OUT_DIR/a1_bench_snn_vgg16"
step a2_bench_snn_resnet20 120 "$PY" scripts/bench_snn.py --device "$DEV" --models resnet20 \
  --timesteps "${SNN_T[@]}" "${SNN_ARGS[@]}" --out "$OUT_DIR/a2_bench_snn_resnet20"
step a3_bench_snn_fused 90 "$PY" scripts/bench_snn.py --device "$DEV" --models vgg16 resnet20 \
  --timesteps "${FUSED_T[@]}" "${SNN_ARGS[@]}" --modes chunked fused fused-step \
  --out "$OUT_DIR/a3_bench_snn_fused"

# (b) one training epoch of full-width vgg16 (decodes the data once into ~/.cache/lowlat)
step b_epoch 150 "$PY" scripts/bench_epoch.py --out "$OUT_DIR/b_epoch.json" "${EPOCH_ARGS[@]}"

# (c) shortened paper run: epochs from b's seconds/epoch and the time left, 70 % ann, 30 % QC
# fine-tuning (about 1.3x slower per epoch), after reserving time for phase2 and eval
RESERVE=$([ "$DRY" = 1 ] && echo 30 || echo 240)  # phase2, eval and step d
read -r E_ANN E_QC < <("$PY" - "$OUT_DIR/b_epoch.json" "$(left)" "$RESERVE" "$DRY" <<'EOF'
import json, sys
try:
    spe = json.load(open(sys.argv[1]))["seconds_per_epoch"] * 1.1  # + validation
except Exception:
    spe = 60.0  # b failed: a guess
avail = max(0.0, float(sys.argv[2]) - float(sys.argv[3]) - 60)  # 60 s: startup, decode, tests
if sys.argv[4] == "1":
    print(1, 1)
else:
    print(max(1, int(0.7 * avail / spe)), max(1, int(0.3 * avail / (1.3 * spe))))
EOF
)
printf '{"ann_epochs": %s, "phase1_epochs": %s, "seconds_left": %s, "reserve_s": %s, "overrides": "%s"}\n' \
  "${E_ANN:-1}" "${E_QC:-1}" "$(left)" "$RESERVE" "${PAPER[*]}" >"$OUT_DIR/c_plan.json"
rm -rf "$RUN_DIR"
step c_paper_run 600 "$PY" -m lowlat.run stage=all "${PAPER[@]}" "paths.root_dir=$RUN_DIR" \
  "ann.epochs=${E_ANN:-1}" "phase1.epochs=${E_QC:-1}" "phase2.timesteps=$P2_T"
mkdir -p "$OUT_DIR/c_paper_run"
for f in "$RUN_DIR"/runs/*/results.csv "$RUN_DIR"/runs/*/results.json; do
  [ -f "$f" ] && cp "$f" "$OUT_DIR/c_paper_run/"
done
"$PY" - "$RUN_DIR" "$OUT_DIR/c_paper_run/artifact_metrics.json" <<'EOF' || true
import json, sys
from pathlib import Path
import torch
out = {}
for p in sorted(Path(sys.argv[1]).glob("runs/*/*.pt")):
    m = torch.load(p, map_location="cpu", weights_only=True).get("metrics", {})
    out[p.name] = {k: v for k, v in m.items() if isinstance(v, int | float | str | None)}
Path(sys.argv[2]).write_text(json.dumps(out, indent=1))
EOF

# (d) lowlat-ft step: plain autograd graph against the compiled neuron kernels, on c's run
C_RUN=$(ls -d "$RUN_DIR"/runs/*/ 2>/dev/null | head -n 1)
step d_bench_finetune 90 "$PY" scripts/bench_finetune.py "${C_RUN:-$RUN_DIR/missing}" \
  --method lowlat --device "$DEV" "${FT_ARGS[@]}" --out "$OUT_DIR/d_bench_finetune"

echo "gpu_check: $((SECONDS - START)) s of $BUDGET; results in $OUT_DIR"

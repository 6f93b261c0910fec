#!/usr/bin/env bash
# One-GPU check: throughput bench + DreamTeacher vs scratch on CamVid, every output under OUT.
#
#   bench/gpu.sh OUT            # on a machine with one CUDA GPU, no network needed
#   bench/gpu.sh OUT tiny       # the same steps at tiny sizes on the CPU (what the tests run)
#
# The gpu sizes below are a first guess, not yet timed on a GPU: the script logs each stage's
# time (OUT/gpu.log, OUT/results.json) so the first GPU run can calibrate them to the 8-minute
# budget. When the label-efficient benchmark (issue 3) lands, its gpu profile replaces the
# pipeline part.
set -euo pipefail
OUT=${1:?usage: bench/gpu.sh OUT_DIR [tiny]}
MODE=${2:-gpu}
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
DATA=${DATA:-../shared/datasets/camvid}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

if [ "$MODE" = tiny ]; then
  DEV=cpu; QUICK=--quick; H=32; W=32; PRESET=tiny; BB=resnet18
  TSTEPS=4; EPOCHS=1; FSTEPS=2; BS=4; LABELS=4; SPLITS="[train]"
  "$PY" -c "from dreamteacher.data.synthetic import make_scenes as m; m('$OUT/data', n=24, image_size=(32, 32), splits={'train': 0.67, 'test': 0.33})"
  DATA=$OUT/data
else
  DEV=cuda; QUICK=; H=128; W=160; PRESET=small; BB=resnet50
  TSTEPS=3000; EPOCHS=60; FSTEPS=1500; BS=64; LABELS=46; SPLITS="[train,val]"
fi

t0=$SECONDS
stage() { echo "[$(date +%T) +$((SECONDS - t0))s] $*" | tee -a "$OUT/gpu.log"; }
DT=("$PY" -m dreamteacher)

stage "throughput ($DEV)"
"$PY" bench/throughput.py --device "$DEV" $QUICK --out "$OUT/throughput.json" | tee -a "$OUT/gpu.log"

stage "train-teacher"
"${DT[@]}" train-teacher --data "$DATA" --out "$OUT/teacher" --image-size $H $W --preset $PRESET \
  --steps $TSTEPS --batch-size $BS --device $DEV "splits=$SPLITS" lr=1e-3 num_samples=16 \
  sample_steps=25 2>>"$OUT/stderr.log" | tee -a "$OUT/gpu.log"
stage "pretrain"
"${DT[@]}" pretrain --data "$DATA" --teacher "$OUT/teacher" --backbone $BB --out "$OUT/pretrain" \
  --epochs $EPOCHS --batch-size $BS --device $DEV "splits=$SPLITS" warmup_epochs=2 \
  2>>"$OUT/stderr.log" | tee -a "$OUT/gpu.log"
stage "export"
"${DT[@]}" export "$OUT/pretrain" --out "$OUT/backbone" | tee -a "$OUT/gpu.log"
for WEIGHTS in "$OUT/backbone" scratch; do
  NAME=$(basename "$WEIGHTS")
  stage "finetune $NAME"
  "${DT[@]}" finetune --data "$DATA" --backbone $BB --weights "$WEIGHTS" --out "$OUT/ft_$NAME" \
    --labels $LABELS --image-size $H $W --steps $FSTEPS --batch-size 16 --device $DEV \
    2>>"$OUT/stderr.log" | tee -a "$OUT/gpu.log"
done
stage "done"

"$PY" - "$OUT" "$((SECONDS - t0))" <<'PYEOF'
import json, sys
from pathlib import Path
out, total = Path(sys.argv[1]), int(sys.argv[2])
runs = {n: json.loads((out / f"ft_{n}" / "metrics.json").read_text())["miou"]
        for n in ("backbone", "scratch")}
res = {"miou": {"dreamteacher": runs["backbone"], "scratch": runs["scratch"]}, "total_s": total,
       "throughput": json.loads((out / "throughput.json").read_text())}
(out / "results.json").write_text(json.dumps(res, indent=2) + "\n")
print(f"DreamTeacher {runs['backbone']:.1f} mIoU, scratch {runs['scratch']:.1f} mIoU, {total} s")
PYEOF

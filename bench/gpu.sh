#!/usr/bin/env bash
# One-GPU check, every output under OUT: the label-efficient benchmark's gpu profile (all
# methods, both protocols, N = 23/46/367, one seed; resnet50 at 256x320) and the throughput bench.
#
#   bench/gpu.sh OUT            # one CUDA GPU, no network needed (DATA=... for another folder)
#   bench/gpu.sh OUT tiny       # the same commands at tiny sizes on the CPU (what the tests run)
#
# Extra arguments after the mode are benchmark key=value overrides. OUT gets gpu.log (stage
# times), results.json / results.md / miou_vs_labels.png (copied up from OUT/benchmark) and
# throughput.json. The benchmark writes partial tables after every evaluation, so a run stopped
# by a time limit still leaves what it finished; re-running resumes from its cached cells.
set -uo pipefail
OUT=${1:?usage: bench/gpu.sh OUT_DIR [gpu|tiny] [key=value ...]}
MODE=${2:-gpu}
shift $(($# < 2 ? $# : 2))
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
DATA=${DATA:-../shared/datasets/camvid}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

if [ "$MODE" = tiny ]; then
  DEV=cpu; QUICK=--quick; PROFILE=smoke
  "$PY" -c "from dreamteacher.data.synthetic import make_scenes as m; m('$OUT/data', n=30, image_size=(32, 48), splits={'train': 0.6, 'val': 0.1, 'test': 0.3})"
  DATA=$OUT/data
  EXTRA=(labels=[4] methods=[scratch,dreamteacher,simclr])
else
  DEV=cuda; QUICK=; PROFILE=gpu; EXTRA=()
fi

t0=$SECONDS
stage() { echo "[$(date +%T) +$((SECONDS - t0))s] $*" | tee -a "$OUT/gpu.log"; }
rc=0

stage "throughput ($DEV)"
"$PY" bench/throughput.py --device "$DEV" $QUICK --out "$OUT/throughput.json" \
  2>>"$OUT/stderr.log" | tee -a "$OUT/gpu.log" || rc=1
stage "benchmark --profile $PROFILE ($DEV) on $DATA"
"$PY" -m dreamteacher benchmark --profile "$PROFILE" --data "$DATA" --out "$OUT/benchmark" \
  --device "$DEV" "${EXTRA[@]}" "$@" 2>>"$OUT/stderr.log" \
  | tee -a "$OUT/gpu.log" || rc=1
for f in results.json results.md miou_vs_labels.png; do
  [ -f "$OUT/benchmark/$f" ] && cp "$OUT/benchmark/$f" "$OUT/$f"
done
stage "benchmark done (rc=$rc)"

stage "done (rc=$rc) in $((SECONDS - t0)) s"
exit $rc

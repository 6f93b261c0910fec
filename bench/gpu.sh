#!/usr/bin/env bash
# One-GPU check, every output under OUT, in BUDGET seconds (default 480 = 8 minutes) at most.
# The two parts the check is for come first, the extra one takes what is left:
#   1. the throughput bench, at most THROUGHPUT_S (90) seconds; with COMPILE=1 also
#      torch.compile'd (teacher and student). On an H200 with a cold inductor cache that did
#      not finish in 170 s: raise THROUGHPUT_S and BUDGET with it;
#   2. the label-efficient benchmark's gpu profile (the six pretrained methods, both
#      protocols, N = 23, one seed; resnet50 at 256x320), at most BENCHMARK_S (0 = no cap);
#   3. peak RSS and GPU memory of pretrain on 1k vs 10k generated images, at most MEMORY_S
#      (100), in what is left.
#
#   bench/gpu.sh OUT            # one CUDA GPU, no network needed (DATA=... for another folder)
#   bench/gpu.sh OUT tiny       # the same commands at tiny sizes on the CPU (what the tests run)
#
# Extra arguments after the mode are benchmark key=value overrides. OUT gets gpu.log (stage
# times), throughput.json, memory.json and results.json / results.md / miou_vs_labels.png
# (copied up from OUT/benchmark). Each stage runs under `timeout` with its cap or what is
# left of the budget; the benchmark writes partial tables after every evaluation, so a run
# stopped by the budget still leaves what it finished, and re-running resumes from its
# cached cells. The exit status is 0 only when every stage finished.
set -uo pipefail
OUT=${1:?usage: bench/gpu.sh OUT_DIR [gpu|tiny] [key=value ...]}
MODE=${2:-gpu}
shift $(($# < 2 ? $# : 2))
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)  # OUT and DATA given relative to where the script is called from
if [ -n "${DATA:-}" ] && [ "$MODE" != tiny ]; then  # tiny mode makes its own data
  [ -d "$DATA" ] || { echo "gpu.sh: DATA=$DATA is not a folder; point DATA at the data set" >&2; exit 2; }
  DATA=$(cd "$DATA" && pwd)
fi
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
DATA=${DATA:-../shared/datasets/camvid}
BUDGET=${BUDGET:-480}

if [ "$MODE" = tiny ]; then
  DEV=cpu; PROFILE=smoke
  THROUGHPUT=(--quick)
  COMPILE_ARGS=(--compile --compile-backend aot_eager)  # inductor's C++ build is slow
  MEMORY=(--sizes 40 400 --steps 3)
  CAPS=(0 0 0)  # no caps on a (slow) CI machine unless asked for
  "$PY" -c "from dreamteacher.data.synthetic import make_scenes as m; m('$OUT/data', n=30, image_size=(32, 48), splits={'train': 0.6, 'val': 0.1, 'test': 0.3})"
  DATA=$OUT/data
  EXTRA=(labels=[4] methods=[scratch,dreamteacher,simclr])
else
  DEV=cuda; PROFILE=gpu
  THROUGHPUT=()
  COMPILE_ARGS=(--compile)
  MEMORY=(--sizes 1000 10000 --steps 20)
  CAPS=(90 0 100)  # on one H200 (docs/benchmarks.md): 67 s, 324 s, 77 s; 468 s in all
  EXTRA=()
fi
[ "${COMPILE:-0}" = 1 ] && THROUGHPUT+=("${COMPILE_ARGS[@]}")
# caps per stage (seconds, 0 = none): the benchmark keeps at least BUDGET - THROUGHPUT_S;
# a throughput run stopped while compiling keeps its eager figures
THROUGHPUT_S=${THROUGHPUT_S:-${CAPS[0]}}
BENCHMARK_S=${BENCHMARK_S:-${CAPS[1]}}
MEMORY_S=${MEMORY_S:-${CAPS[2]}}

t0=$SECONDS
stage() { echo "[$(date +%T) +$((SECONDS - t0))s] $*" | tee -a "$OUT/gpu.log"; }
rc=0
# run a stage for at most CAP seconds (0 = no cap) and what is left of the budget;
# timeout's exit 124 (137 after the kill) = stopped
timed() {
  local cap=$1; shift
  local left=$((BUDGET - (SECONDS - t0)))
  if [ "$left" -le 0 ]; then stage "skipped: the ${BUDGET} s budget is spent"; rc=1; return; fi
  local limit=$left
  if [ "$cap" -gt 0 ] && [ "$cap" -lt "$left" ]; then limit=$cap; fi
  timeout --signal=TERM --kill-after=10 "$limit" "$@" 2>>"$OUT/stderr.log" | tee -a "$OUT/gpu.log"
  local s=${PIPESTATUS[0]}
  if [ "$s" -eq 124 ] || [ "$s" -eq 137 ]; then
    if [ "$limit" -eq "$cap" ]; then stage "stopped at its ${cap} s cap"
    else stage "stopped at the ${BUDGET} s budget"; fi
  fi
  [ "$s" -eq 0 ] || rc=1
}

stage "throughput ($DEV)"
timed "$THROUGHPUT_S" "$PY" bench/throughput.py --device "$DEV" "${THROUGHPUT[@]}" --out "$OUT/throughput.json"
stage "benchmark --profile $PROFILE ($DEV) on $DATA"
timed "$BENCHMARK_S" "$PY" -m dreamteacher benchmark --profile "$PROFILE" --data "$DATA" \
  --out "$OUT/benchmark" --device "$DEV" "${EXTRA[@]}" "$@"
for f in results.json results.md miou_vs_labels.png; do
  [ -f "$OUT/benchmark/$f" ] && cp "$OUT/benchmark/$f" "$OUT/$f"
done
stage "memory against dataset size ($DEV)"
timed "$MEMORY_S" "$PY" bench/memory.py --device "$DEV" "${MEMORY[@]}" --out "$OUT/memory.json"

stage "done (rc=$rc) in $((SECONDS - t0)) s"
exit $rc

#!/usr/bin/env bash
# The one device run (a GPU host with ~16 cores; prepared so that one call does it, about 10 minutes):
#   1. benchmarks/gpu_check.sh: batched adaptation on cuda and cpu, the CPU-vs-CUDA learner agreement test
#   2. learner throughput on cpu and cuda: MAML's outer step, PEARL's SAC steps (with and without overlap),
#      the main job's belief learner (benchmarks/learner_speed.py)
#   3. the scaling curve: end-to-end env steps/s of MAML on reach (scaling.py's job) vs rollout workers 1, 2, 4,
#      8, 14, and across 3 Ray nodes on 127.0.0.1 with one removed mid-iteration (benchmarks/scaling.py)
# Steps 2-3 need Ray, MLflow and pybullet; a host without them runs step 1 and says what is missing. Each step
# has its own time limit, so one slow step cannot starve the others. Results (JSON with provenance, and the
# printed tables) go to $OUT (or ./device-check); copy the JSON into results/ and run benchmarks/report.py.
#
#   OUT=/tmp/out bash benchmarks/device_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-device-check}"
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
unset RAY_ADDRESS  # a private local Ray on 127.0.0.1, never a cluster named in the environment
status=0

run_step() {  # run_step NAME SECONDS CMD...: a time-limited step whose output is kept in $out/NAME.txt
  local name=$1 limit=$2 rc=0
  shift 2
  echo "== $name (limit ${limit}s)"
  timeout "$limit" "$@" > "$out/$name.txt" 2>&1 || rc=$?
  tail -n 25 "$out/$name.txt"
  echo "== $name: exit $rc"
  [[ $rc -eq 0 ]] || status=1
}

{ nproc; nvidia-smi -L || true; } 2>&1 | tee "$out/machine.txt"

run_step gpu-check 240 env OUT="$out" bash benchmarks/gpu_check.sh

if python -c "import ray, mlflow, pybullet, torch" 2>"$out/missing.txt"; then
  run_step learner-speed 240 python benchmarks/learner_speed.py --learners maml pearl pearl-overlap belief \
    --iterations 2 --json "$out/learner-speed-device.json"
  run_step scaling 300 python benchmarks/scaling.py --workers 1 2 4 8 14 --rounds 2 --iterations 1 --nodes 3 \
    --json "$out/scaling-device.json"
else
  echo "learner throughput and scaling skipped: $(tail -n 1 "$out/missing.txt")" | tee -a "$out/machine.txt"
  status=1
fi
echo "device_check: exit $status (results in $out)"
exit $status

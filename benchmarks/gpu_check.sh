#!/usr/bin/env bash
# One-off check on a GPU machine (run from the repository root): the adaptation benchmark on cuda and
# on cpu, and the CPU-vs-CUDA agreement test. Needs only torch (CUDA build), numpy, pydantic, gymnasium,
# pyyaml and this repository; no Ray, MLflow or pybullet. Results go to $OUT (or ./gpu-check) and stdout.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-gpu-check}"
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
status=0

{ nvidia-smi -L || true
  python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available())"
  python -c "import numpy, pydantic, gymnasium, yaml; print('numpy/pydantic/gymnasium/yaml: ok')" || true
} 2>&1 | tee "$out/environment.txt"

python benchmarks/adaptation.py --device cuda --json "$out/adaptation-cuda.json" 2>&1 | tee "$out/adaptation-cuda.md" \
  || status=1
python benchmarks/adaptation.py --device cpu --json "$out/adaptation-cpu.json" 2>&1 | tee "$out/adaptation-cpu.md" \
  || status=1

# The agreement test: with pytest when it is installed, else called directly (same assertions).
if python -c "import pytest" 2>/dev/null; then
  python -m pytest -q -p no:cacheprovider -o addopts="" -rs tests/learner/test_remote_learner.py \
    -k test_cpu_and_cuda_updates_agree 2>&1 | tee "$out/agreement.txt" || status=1
else
  python -c "import sys; sys.path.insert(0, 'tests/learner'); import test_remote_learner as t; \
import torch; assert torch.cuda.is_available(), 'no CUDA'; t.test_cpu_and_cuda_updates_agree(); print('agreement: passed')" \
    2>&1 | tee "$out/agreement.txt" || status=1
fi
echo "gpu_check: exit $status (results in $out)"
exit $status

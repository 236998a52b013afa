#!/usr/bin/env bash
# GPU check, for whoever gets a CUDA machine: the CUDA test tier (real Triton kernels against the
# references, `pytest -m cuda`) and the GPU benchmarks (providers "triton" and "*-cuda" of the op
# benches), in at most 8 minutes, with every result in one Markdown file.
#
#   bash bench/gpu_check.sh [OUT_FILE]        (default: gpu_check_results.md)
#
# Run from the repository root with the package installed (pip install -e ".[test,triton]"),
# on a quiet machine. Budget: 3 min for the tier, 4.5 min for the benches (each under `timeout`,
# so a hang cannot eat the rest), the remainder for setup and the report. Exit status: non-zero
# when the tier failed or a step timed out; the file says which.
set -u -o pipefail

OUT="${1:-gpu_check_results.md}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
PYTHON="${PYTHON:-python}"
export TRITON_DEFAULT_FP_FUSION="${TRITON_DEFAULT_FP_FUSION:-1}"  # Triton 3.9's default
unset TRITON_INTERPRET  # the real kernels, compiled for the GPU

status=0
{
  echo "# vsad GPU check ($(date -u +%Y-%m-%dT%H:%M:%SZ))"
  echo
  echo '```'
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1
  else
    echo "nvidia-smi: not available"
  fi
  "$PYTHON" - <<'EOF' 2>&1
import torch, vsad
print("torch", torch.__version__, "cuda", torch.version.cuda, "devices", torch.cuda.device_count())
try:
    import triton
    print("triton", triton.__version__)
except ImportError:
    print("triton: not installed")
print("vsad", vsad.__version__, vsad.backends())
EOF
  echo '```'
} >"$OUT"

# 1. The CUDA tier.
timeout 180 "$PYTHON" -m pytest -m cuda tests/test_cuda_tier.py -q -rA -p no:cacheprovider \
  >"$WORK/tier.txt" 2>&1
rc=$?
{
  echo
  echo "## CUDA test tier (pytest -m cuda): exit $rc$([ $rc -eq 124 ] && echo ', TIMED OUT after 180 s')"
  echo
  echo '```'
  tail -n 80 "$WORK/tier.txt"
  echo '```'
} >>"$OUT"
[ $rc -ne 0 ] && status=1

# 2. The GPU benchmarks (CUDA providers only; the CPU ones are BENCHMARKS.md's other tables).
timeout 270 "$PYTHON" -m pytest bench/test_window_attention.py bench/test_memory_bank.py \
  bench/test_min_l2_local_small.py -k "triton or cuda" -q -p no:cacheprovider \
  --benchmark-json="$WORK/bench.json" >"$WORK/bench.txt" 2>&1
rc=$?
{
  echo
  echo "## GPU benchmarks (-k 'triton or cuda'): exit $rc$([ $rc -eq 124 ] && echo ', TIMED OUT after 270 s')"
  echo
  if [ -s "$WORK/bench.json" ]; then
    "$PYTHON" bench/report.py "$WORK/bench.json" 2>&1
  else
    echo "(no benchmark JSON was written)"
  fi
  echo
  echo '```'
  tail -n 40 "$WORK/bench.txt"
  echo '```'
} >>"$OUT"
[ $rc -ne 0 ] && status=1

echo "gpu_check: results in $OUT (status $status)"
exit $status

#!/usr/bin/env bash
# GPU check, for whoever gets a CUDA machine: the CUDA test tier (real Triton kernels against the
# references, `pytest -m cuda`) and the GPU benchmarks (providers "triton" and "*-cuda" of the op
# benches), in at most 8 minutes, with every result in one Markdown file.
#
#   bash bench/gpu_check.sh [OUT_FILE]        (default: gpu_check_results.md)
#
# Run from the repository root with the package installed (pip install -e ".[test,triton]"),
# on a quiet machine. Budget: 2.5 min for the tier, 5.2 min for the benches (each file under its
# own `timeout`, so a hang cannot eat the rest), the remainder for setup and the report. Exit
# status: non-zero when the tier failed or a step timed out; the file says which. Each bench
# file's JSON is copied beside OUT_FILE (gpu_bench_<file>.json).
set -u -o pipefail

OUT="${1:-gpu_check_results.md}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
PYTHON="${PYTHON:-python}"
# -P: the checkout must not come first on sys.path (its vsad/ has no compiled vsad._C and no
# vsad.kernels); the installed package is the one checked.
PY=("$PYTHON" -P)
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
  "${PY[@]}" - <<'EOF' 2>&1
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
# -rfEs and short tracebacks: the failures' reasons must fit in the file (a full -rA list of
# passes once pushed them out of its tail). The whole log is kept beside OUT_FILE.
timeout 150 "${PY[@]}" -m pytest -m cuda tests/test_cuda_tier.py tests/test_device.py -q -rfEs \
  --tb=short -p no:cacheprovider >"$WORK/tier.txt" 2>&1
rc=$?
{
  echo
  echo "## CUDA test tier (pytest -m cuda): exit $rc$([ $rc -eq 124 ] && echo ', TIMED OUT after 150 s')"
  echo
  echo '```'
  tail -n 250 "$WORK/tier.txt"
  echo '```'
} >>"$OUT"
cp "$WORK/tier.txt" "$(dirname "$OUT")/gpu_tier_log.txt" 2>/dev/null
[ $rc -ne 0 ] && status=1

# 2. The GPU benchmarks (CUDA providers only; the CPU ones are BENCHMARKS.md's other tables).
# One pytest per file, each under its own timeout: pytest-benchmark writes its JSON only at the
# end of a session, so a file that runs long loses its own figures, not the others'.
bench_file() {  # FILE SECONDS
  local name rc
  name="$(basename "$1" .py)"
  timeout "$2" "${PY[@]}" -m pytest "$1" -k "triton or cuda" -q -p no:cacheprovider \
    --benchmark-json="$WORK/$name.json" >"$WORK/$name.txt" 2>&1
  rc=$?
  {
    echo
    echo "## GPU benchmarks: $1 (-k 'triton or cuda'): exit $rc$([ $rc -eq 124 ] && echo ", TIMED OUT after $2 s")"
    echo
    if [ -s "$WORK/$name.json" ]; then
      "${PY[@]}" bench/report.py "$WORK/$name.json" 2>&1
      cp "$WORK/$name.json" "$(dirname "$OUT")/gpu_bench_$name.json" 2>/dev/null
    else
      echo "(no benchmark JSON was written)"
    fi
    echo
    echo '```'
    tail -n 25 "$WORK/$name.txt"
    echo '```'
  } >>"$OUT"
  [ $rc -ne 0 ] && status=1
}
# Budgets from the H200 run of 2026-12-04: 15 s, 25 s, 17 s; test_backbone.py (three fits of 40
# samples on the GPU before its predicts) ran past 60 s there.
bench_file bench/test_window_attention.py 60
bench_file bench/test_memory_bank.py 60
bench_file bench/test_min_l2_local_small.py 40
bench_file bench/test_backbone.py 150

echo "gpu_check: results in $OUT (status $status)"
exit $status

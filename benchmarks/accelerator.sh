#!/usr/bin/env bash
# One prepared benchmark run on a GPU/TPU machine: the quick sizes of the core, scaling and sweep
# workloads, every record carrying the device (JAX's default device; torch uses CUDA if it sees
# it). A few minutes on one GPU. Install first: pip install -e '.[bench]' and a jax[cuda] wheel.
#
#   bash benchmarks/accelerator.sh [OUT_DIR] [more arguments for python -m benchmarks]
#
# Writes OUT_DIR/{results.json,results.md,environment.json,device.txt} (default OUT_DIR:
# docs/benchmarks/accelerator). Refuses to run (exit 2) when JAX sees no accelerator, unless
# GRADFLOW_BENCH_ALLOW_CPU=1 (how the test suite checks this script on a CPU machine).
# GRADFLOW_BENCH_ONLY overrides the module list.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-docs/benchmarks/accelerator}"
shift || true
platform=$(python -c "import jax; print(jax.devices()[0].platform)")
if [ "$platform" = cpu ] && [ "${GRADFLOW_BENCH_ALLOW_CPU:-0}" != 1 ]; then
    echo "benchmarks/accelerator.sh: JAX sees no GPU/TPU (platform: cpu); nothing run" >&2
    exit 2
fi
mkdir -p "$OUT"
{
    python -c "import jax; print(*jax.devices(), sep='\n')"
    nvidia-smi -L 2>/dev/null || true
} > "$OUT/device.txt"
# shellcheck disable=SC2086  # the module list is meant to split into words
python -m benchmarks --quick --skip-nt --only ${GRADFLOW_BENCH_ONLY:-core scaling sweep} \
    --out "$OUT" "$@"

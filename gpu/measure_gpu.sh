#!/usr/bin/env bash
# Measures the WebGPU trainer against the CPU js backend, per training step,
# on a machine with a real GPU. Run from anywhere:
#
#   gpu/measure_gpu.sh [LOG]
#
# Needs Deno 2 on PATH and a GPU driver that wgpu can use: Vulkan on Linux,
# Metal on macOS, Direct3D 12 on Windows. With no GPU, Deno falls back to a
# software adapter such as Mesa's llvmpipe. The script then skips the large
# configuration, because one of its steps would take about an hour there (an
# estimate from the default configuration's 5 to 8 s per step).
#
# Two configurations, both with vocabulary 1000, AdamW and clipping at 1:
#   default: d_model 64, 4 layers, 4 heads, context 128, batch 8
#   large:   d_model 512, 8 layers, 8 heads, context 256, batch 32
# For each, gpu/bench.ts prints the adapter, the median, min and max step
# time and tokens/s of the GPU trainer, then of the CPU js backend. The
# large CPU step is timed at batch 1 and scaled by 32, because a full step
# takes about 20 minutes in plain TypeScript. That row is labelled
# "(estimate)".
#
# Expected duration: the CPU figures took 6 s (default) and 35 s (large, batch
# 1) on a 2-core x86-64 machine. The GPU part is an estimate, not measured on a
# GPU: under a minute. So the script should finish within a few minutes.
# The output is Markdown tables; LOG, when given, receives a copy.
set -euo pipefail

cd "$(dirname "$0")/.."
if [[ $# -gt 0 ]]; then
  log="$1"
  : >"$log"
else
  log="$(mktemp)"
  trap 'rm -f "$log"' EXIT
fi
bench=(deno run --allow-read --allow-env gpu/bench.ts)

"${bench[@]}" --config default --steps 10 --warmup 3 --gemm 512,1024,2048 --cpu-steps 3 |
  tee -a "$log"

adapter="$(grep -m1 '^adapter: ' "$log")"
case "$adapter" in
  *llvmpipe* | *lavapipe* | *SwiftShader* | *"Microsoft Basic Render"*)
    echo "measure_gpu: skipping the large configuration on a software adapter (${adapter#adapter: })" |
      tee -a "$log"
    exit 0
    ;;
esac

echo | tee -a "$log"
"${bench[@]}" --config large --steps 5 --warmup 2 --gemm none --cpu-steps 1 --cpu-batch 1 |
  tee -a "$log"

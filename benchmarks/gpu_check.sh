#!/usr/bin/env bash
# The GPU path, run once on a CUDA machine, in under 8 minutes: the test suite with CUDA visible (the whole quick study on CUDA: tests/test_gpu.py),
# 300 steps of the seed model with --bf16 and with --compile (the textbook loss, the CUDA default),
# and the throughput benchmark in both precisions. Everything lands in one folder:
#
#   bash benchmarks/gpu_check.sh [OUT]        # default OUT: ${OUT:-gpu_check}
#
# It needs the local data beside the checkout (../shared/data) or WIKITEXT2_DIR and GPT2_TOKENIZER.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-${OUT:-gpu_check}}
mkdir -p "$out"
data=${WIKITEXT2_DIR:-../shared/data/wikitext-2-raw-v1}
tokenizer=${GPT2_TOKENIZER:-../shared/data/gpt2-tokenizer}
python=${PYTHON:-python}

{ nvidia-smi; "$python" -c "import torch; print(torch.__version__, torch.cuda.get_device_name(0))"; } > "$out/device.txt" 2>&1
timeout 300 "$python" -m pytest -q -m "not slow" > "$out/tests.txt" 2>&1; echo "tests exit $?" >> "$out/summary.txt"
for mode in bf16 compile; do
  timeout 60 "$python" train_simple.py --device cuda --activation gelu --seeds 1 --max_steps 300 --num_epochs 1 \
    --data_dir "$data" --tokenizer "$tokenizer" --train_split test --val_split validation:A --test_split validation:B \
    --"$mode" --output_dir "$out/runs_$mode" --overwrite > "$out/train_$mode.txt" 2>&1
  echo "train --$mode exit $?" >> "$out/summary.txt"
done
timeout 60 "$python" benchmarks/throughput.py --device cuda --precisions fp32 bf16 --rounds 10 --json \
  > "$out/throughput.json" 2> "$out/throughput.err"
echo "throughput exit $?" >> "$out/summary.txt"
cat "$out/summary.txt"

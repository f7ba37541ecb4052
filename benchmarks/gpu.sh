#!/usr/bin/env bash
# The single-GPU benchmark suite: CUDA tests, the trainer's step beside the plain PyTorch baseline
# of the same size (eager and compiled, same audio per step, same call), the model's parts one at a
# time, and dev-clean-sized decoding. Markdown tables on stdout.
#
#   bash benchmarks/gpu.sh path/to/plain_ctc_transformer.py
set -uo pipefail   # no -e: a config that does not fit in memory reports and the rest goes on
cd "$(dirname "$0")/.." || exit 1
baseline=${1:?usage: bash benchmarks/gpu.sh path/to/plain_ctc_transformer.py}

echo "## $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader), $(date -u +%F)"
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"

echo "### CUDA tests"
python -m pytest -q -x tests/test_optim.py tests/test_features.py tests/test_ema.py tests/test_position.py \
  tests/test_compile_blocks.py tests/test_model.py 2>&1 | tail -3

echo "### Training step beside the plain baseline"
python -m benchmarks.train_step --config configs/librispeech_paper.yaml --config configs/base.yaml \
  --seconds 400 800 --compile none --attention auto torch --profile --baseline "$baseline" --json step.json

echo "### The model's parts"
python -m benchmarks.model_parts --compile

echo "### Decoding a dev-clean-sized set"
python -m benchmarks.decode --config configs/base.yaml --batch-seconds 1600
python -m benchmarks.decode --config configs/librispeech_paper.yaml --batch-seconds 1600

#!/usr/bin/env bash
# The single-GPU benchmark suite: CUDA tests, training-step throughput/MFU/memory of the
# tiny, base and paper-size configs, and dev-clean-sized decoding. Markdown tables on stdout.
#
#   bash benchmarks/gpu.sh
set -uo pipefail   # no -e: a config that does not fit in memory reports and the rest goes on
cd "$(dirname "$0")/.."

echo "## $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader), $(date -u +%F)"
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"

echo "### CUDA tests"
python -m pytest -q -x tests/test_features.py tests/test_ema.py tests/test_model.py 2>&1 | tail -3

echo "### Training step"
python -m benchmarks.train_step --config configs/synth_tiny.yaml --steps 100 data.max_batch_seconds=600 data.max_duration=30
python -m benchmarks.train_step --config configs/base.yaml --steps 60 data.max_batch_seconds=600 data.max_duration=30
python -m benchmarks.train_step --config configs/base.yaml --steps 60 data.max_batch_seconds=1200 data.max_duration=30
python -m benchmarks.train_step --config configs/librispeech_paper.yaml --steps 200 data.max_batch_seconds=400 data.max_duration=30
python -m benchmarks.train_step --config configs/librispeech_paper.yaml --steps 20 data.max_batch_seconds=800 data.max_duration=30

echo "### Decoding a dev-clean-sized set"
python -m benchmarks.decode --config configs/base.yaml --batch-seconds 1600
python -m benchmarks.decode --config configs/librispeech_paper.yaml --batch-seconds 1600

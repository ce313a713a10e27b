#!/bin/bash
# The prepared device run for a session that is lent a GPU (docs/benchmarks.md, issue "Fast on a GPU").
# Here, before the call (the device machine has torch, transformers, peft and accelerate, not the rest):
#   echo /.whl/ >> .git/info/exclude; python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 \
#     --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
#     datasets gguf bitsandbytes dill multiprocess xxhash trl   (plus whatever `pip show` there says is missing)
# Then: run(command="bash bench/gpu_session.sh [tests|bench|variants]", carry=[".whl"], timeout_s=540).
#   tests     the CUDA tests (bf16, resume, packing, QLoRA, compile with inductor, tokens per pass, flex attention):
#             about 2 minutes
#   bench     ftnb against the padded Trainer, the padding-free Trainer and TRL, SmolLM2-135M and -1.7B shapes, the chat
#             and random mixes, 50 steps each (not yet timed on a GPU: measure one shape first)
#   variants  the same for LoRA with --compile and with --attn flex_attention
set -o pipefail
case "${1:-tests}" in tests|bench|variants) ;; *) echo "usage: bench/gpu_session.sh [tests|bench|variants]"; exit 2 ;; esac
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site || exit 1
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
bench() { python bench/throughput.py --shapes smollm2-135m smollm2-1.7b "$@" 2>&1 | grep -v "Warning\|warnings.warn"; }
case "${1:-tests}" in
  tests) timeout 300 python -m pytest -q -p no:cacheprovider tests/test_cuda.py 2>&1 | tee "$OUT/cuda_tests.log" ;;
  bench) bench --methods lora full --json "$OUT/bench.json" | tee "$OUT/bench.log" ;;
  variants) bench --methods lora --compile --json "$OUT/compile.json" | tee "$OUT/compile.log"
            bench --methods lora --attn flex_attention --json "$OUT/flex.json" | tee "$OUT/flex.log" ;;
esac

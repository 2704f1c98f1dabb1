#!/usr/bin/env bash
# The CUDA figures in one run (about 5 minutes on one H100/H200-class GPU):
#   1. lmcore's CUDA tests (tests/lmcore/test_cuda.py; the rest of the suite is CPU-only, as in CI);
#   2. GPT-2-small shape (12 x 768, block 1024, batch 16) on character-level Tiny Shakespeare,
#      bf16 autocast, eager and torch.compile: tokens/s, ms/step and MFU against the bf16 matmul
#      peak measured on the same GPU;
#   3. the character-level presets: time to nanoGPT's validation loss 1.886 on the GPU.
#
#   bash bench/gpu.sh                 # figures and logs land in outputs/bench-gpu/
#   OUT=/some/dir PYTHON=python3 bash bench/gpu.sh
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-outputs/bench-gpu}
python=${PYTHON:-python}
mkdir -p "$out"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
status=0

run() {  # run NAME COMMAND...: log to $out/gpu.log, remember a failure, go on
    echo "=== $1: ${*:2}" | tee -a "$out/gpu.log"
    "${@:2}" 2>&1 | tee -a "$out/gpu.log" | tail -n 40
    local rc=${PIPESTATUS[0]}
    echo "=== $1: exit $rc" | tee -a "$out/gpu.log"
    [ "$rc" -eq 0 ] || status=1
}

: >"$out/gpu.log"
run gpu nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
run torch "$python" -c "import torch; print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name())"
run tests env LMCORE_TEST_CUDA=1 "$python" -m pytest -q -p no:cacheprovider tests/lmcore/test_cuda.py
bench=("$python" bench/shakespeare.py --device cuda --threads 4)
run gpt2-small "${bench[@]}" --preset gpt-fast-char --gpt2-small --steps 300 --eval-windows 128 \
    --json "$out/gpt2-small.json"
run gpt2-small-compiled "${bench[@]}" --preset gpt-fast-char --gpt2-small --steps 300 --eval-windows 128 \
    --compile --json "$out/gpt2-small-compiled.json"
for preset in gpt-fast-char lstm-fast-char nanogpt-char; do
    run "$preset" "${bench[@]}" --preset "$preset" --target 1.886 --eval-interval 50 --json "$out/$preset.json"
done
exit $status

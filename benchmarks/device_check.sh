#!/usr/bin/env bash
# Every GPU check of puzzlekit in one prepared run (about 6-8 minutes on one H200), for a machine
# with CUDA, torch, triton and transformers already installed (the `device` tool's H200 image):
#
#   bash benchmarks/device_check.sh            # writes logs / JSON under $OUT (default /tmp/puzzlekit-device)
#
# 1. the gpu-marked tests (Triton wide-SwiGLU kernel on CUDA, bf16 model parity with transformers' Llama,
#    BLD + scoring with the parent on CUDA against a CPU run);
# 2. benchmarks/fusion_gpu.py: the Triton kernel vs torch, and a run of 8 FFNs fused vs unfused (bf16);
# 3. benchmarks/profile_hardware.py --device cuda: measured sub-block profiles of 4 layers of
#    Super-49B's dimensions, the calibrated roofline's per-sub-block error and the whole-model additivity;
# 4. GKD under FSDP2 on CUDA: the gpu test of tests/test_distill_fsdp.py (bf16 MixedPrecisionPolicy,
#    activation checkpointing, stop + resume bit-identical) and benchmarks/distill.py with one process,
#    plain vs FSDP in bf16 (CUDA max allocated, step time).  One GPU here: the multi-process figures are
#    the CPU / gloo ones in README.md.
# Each step has its own time limit, so one that hangs does not take the others' time.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/puzzlekit-device}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
$PY -c "import torch, sys; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else ''); sys.exit(0 if torch.cuda.is_available() else 1)" \
    || { echo "no CUDA device: nothing to check"; exit 1; }
# puzzlekit itself (pure Python); its solvers' native packages are not needed by these checks
$PY -m pip install -q --no-deps --no-build-isolation -e . > "$OUT/install.log" 2>&1 || { tail -20 "$OUT/install.log"; exit 1; }
rc=0
step() {  # step NAME SECONDS COMMAND...: run, keep its log, remember a failure
    local name=$1 secs=$2; shift 2
    echo "== $name"
    timeout "$secs" "$@" > "$OUT/$name.log" 2>&1; local r=$?
    tail -15 "$OUT/$name.log"
    [ $r -eq 0 ] || { echo "!! $name exited $r"; rc=1; }
}
step gpu_tests 260 $PY -m pytest -q -p no:cacheprovider -m gpu tests/test_fusion_triton.py tests/test_model.py tests/test_bld.py tests/test_model_placement.py tests/test_distill_fsdp.py
step fusion_gpu 150 $PY benchmarks/fusion_gpu.py --tokens 1,128,4096 --json
step profile_cuda 240 $PY benchmarks/profile_hardware.py --device cuda --parent super-49b --layers 4 --archs 2 \
    --batch 16 --prefill 512 --decode 32 --dtype bf16 --rounds 3 -o "$OUT/profile_cuda"
step distill_fsdp_cuda 180 $PY benchmarks/distill.py --processes 1 --mixed-precision auto --layers 12 --batch 8 --seq 256 --json
echo "device checks done (rc=$rc); logs in $OUT"
exit $rc

#!/usr/bin/env bash
# Device-tool driver for bench/gpu_chat.py (run from the repo root on the device, .whl carried):
#   bash bench/device_run.sh quick            2-layer smoke run of every stage, in the foreground
#   bash bench/device_run.sh launch           the full 40-layer run as ONE background process (setsid: it
#                                             outlives this call while the machine is held)
#   bash bench/device_run.sh poll SECONDS     wait up to SECONDS for it to finish; copy its JSON + log to $OUT
#   bash bench/device_run.sh kernels          NF4 kernels only (bitsandbytes vs the kit's, random weights), foreground
#   bash bench/device_run.sh tests [ARGS]     the kernel and decode-loop tests on the GPU (KIT_TEST_DEVICE=cuda), incl. `gpu`
# Extra arguments after launch/quick/kernels go to bench/gpu_chat.py.
source bench/device_setup.sh || exit 1
mode="$1"; shift
case "$mode" in
  quick)
    python3 bench/gpu_chat.py --layers 2 --quick --out "$OUT/quick.json" --work /tmp/quick "$@" 2>&1 | tee "$OUT/quick.log" | grep -v Warning | cut -c1-300 | tail -70
    rm -rf /tmp/quick ;;
  kernels)
    python3 bench/gpu_chat.py --kernels-only --out "$OUT/kernels.json" --work /tmp/kern "$@" 2>&1 | tee "$OUT/kernels.log" | grep -v Warning | cut -c1-400 | tail -40 ;;
  tests)
    KIT_TEST_DEVICE=cuda python3 -m pytest -q -p no:cacheprovider tests/test_nf4_cuda.py tests/test_nf4_kernel.py \
      tests/test_fast_decode.py::test_queued_loop_gives_the_synchronous_loops_tokens "$@" 2>&1 | tail -25 ;;
  launch)
    mkdir -p /tmp/full
    setsid nohup python3 bench/gpu_chat.py --out /tmp/full/gpu_chat.json --work /tmp/gpuchat "$@" > /tmp/full/log 2>&1 < /dev/null &
    sleep 2; echo "launched" ;;
  poll)
    for _ in $(seq "$(( ${1:-500} / 5 ))"); do
      grep -q '"done"' /tmp/full/gpu_chat.json 2>/dev/null && break
      pgrep -f "bench/gpu_chat.py --out /tmp/full" > /dev/null || break
      sleep 5
    done
    cp /tmp/full/gpu_chat.json /tmp/full/log "$OUT/" 2>/dev/null
    grep -v Warning /tmp/full/log | cut -c1-300 | tail -60 ;;
esac

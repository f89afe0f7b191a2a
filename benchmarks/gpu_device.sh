#!/usr/bin/env bash
# On the GPU machine (see ../shared/GPU.md): install the carried packages once, then run GPU steps.
#   bash benchmarks/gpu_device.sh install            # gpu_pack.sh's parts in /tmp/w -> /tmp/site, /tmp/rfsite
#   bash benchmarks/gpu_device.sh wheels             # gpu_bundle.sh's wheels in /tmp/w -> /tmp/site
#   bash benchmarks/gpu_device.sh session OUT        # benchmarks/gpu_session.py (ORT alone)
#   bash benchmarks/gpu_device.sh tests OUT          # tests/test_gpu.py
#   bash benchmarks/gpu_device.sh precision OUT S [ARGS...]  # benchmarks/gpu_precision.py ARGS within S seconds
#   bash benchmarks/gpu_device.sh decode OUT         # benchmarks/gpu_decode.py (JPEG decode, CPU and GPU)
#   bash benchmarks/gpu_device.sh cold OUT [ARGS...] # benchmarks/gpu_cold.py ARGS (a cold load, phase by phase)
#   bash benchmarks/gpu_device.sh bench OUT ARGS...  # benchmarks/gpu.py ARGS (LIMIT_S bounds it, default 560)
# Every step is bounded by `timeout` and writes its log under OUT as it goes.
set -u
step=$1; out=${2:-/tmp/out}; shift 2 || true
export PYTHONPATH=/tmp/site:$PWD RAY_AUTH_MODE=disabled RAY_USAGE_STATS_ENABLED=0 PYTHONUNBUFFERED=1
export LD_LIBRARY_PATH=/opt/torch/.venv/lib/python3.12/site-packages/nvidia/cu13/lib:/tmp/site/nvidia/cu13/lib:/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
export PATH=/tmp/site/bin:$PATH
mkdir -p "$out"
case $step in
  install)
    cat /tmp/w/bundle.tar.xz.part* | python3 -c "import sys, tarfile; tarfile.open(fileobj=sys.stdin.buffer, mode='r|xz').extractall('/tmp', filter='tar')" &&
      rm -f /tmp/w/bundle.tar.xz.part* &&
      { [ ! -f /tmp/w/nvimg.tar.xz ] || tar xJf /tmp/w/nvimg.tar.xz -C /tmp/site; } &&  # a [gpu] extra sent on its own
      python3 -c "import onnxruntime as o, ray; print('ort', o.__version__, o.get_available_providers(), 'ray', ray.__version__)" ;;
  wheels)
    cd /tmp/w && cat wheels.tar.part* > wheels.tar && tar xf wheels.tar && rm wheels.tar.part* &&
      python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site ./*.whl &&
      python3 -c "import onnxruntime as o, ray; print('ort', o.__version__, o.get_available_providers(), 'ray', ray.__version__)" ;;
  session)
    timeout 240 python3 -m benchmarks.gpu_session --onnx .cache/bench/export/yolov8n.onnx --out "$out" 2>&1 \
      | grep -v "^\s*$" | tee "$out/gpu_session.log" ;;
  decode)
    timeout 150 python3 -m benchmarks.gpu_decode --out "$out" 2>&1 | grep -v "^\s*$" | tee "$out/gpu_decode.log" ;;
  cold)
    timeout 150 python3 -m benchmarks.gpu_cold --onnx .cache/bench/export/yolov8n.onnx --out "$out" "$@" 2>&1 \
      | grep -v "^\s*$" | tee "$out/gpu_cold.log" ;;
  tests)
    timeout 300 python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py -rs 2>&1 | tee "$out/test_gpu.log" ;;
  precision)
    timeout $(( ${1:-240} + 90 )) python3 -m benchmarks.gpu_precision --out "$out" --budget-s "${1:-240}" "${@:2}" 2>&1 \
      | grep -v "^\s*$" | tee "$out/gpu_precision.log" ;;
  bench)
    timeout "${LIMIT_S:-560}" python3 -m benchmarks.gpu --onnx .cache/bench/export/yolov8n.onnx --images .cache/bench/images \
      --out "$out" "$@" 2>&1 | grep -v "^\s*$" | tee "$out/gpu_bench.log" ;;
esac

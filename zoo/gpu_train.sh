#!/usr/bin/env bash
# Train every shapes model at once on the lent GPU machine (one H200, 16 cores), bounded in time.
#
#   [KINDS="det seg pose det26 cls"] bash zoo/gpu_train.sh OUT HOURS [START_DIR]
#
# Ultralytics' wheels (ultralytics, ultralytics-thop, ultralytics-platform) are carried in
# .gpu-zoo/whl and installed into /tmp/site; torch, torchvision, OpenCV, NumPy and SciPy are the
# machine's own. The broad data sets are drawn into /tmp/zoo unless a warm machine still has them.
# det, seg, pose, cls and det26 (YOLO26) then train side by side for HOURS each (Ultralytics' time
# mode), from START_DIR/<kind>/last.pt when given (a second call continues the first's weights),
# each copying last.pt into OUT/<kind>/ after every epoch, so a call that is cut short still
# returns weights; cls starts instead from START_DIR/det/last.pt's backbone (from random weights it
# stays at chance on the broad frames). OUT/machine.txt records the machine; OUT/<kind>/train.log each run's output.
set -u
OUT=$1
HOURS=$2
START=${3:-}
export ZOO_WORK=/tmp/zoo YOLO_OFFLINE=1 YOLO_CONFIG_DIR=/tmp/yolo-cfg MPLBACKEND=Agg
mkdir -p "$OUT" /tmp/site
if [ ! -d /tmp/site/ultralytics ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .gpu-zoo/whl/*.whl
fi
export PYTHONPATH=/tmp/site:$PWD
{
  date -u +%FT%TZ
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python3 -c 'import torch, ultralytics; print("torch", torch.__version__, "cuda", torch.version.cuda, "ultralytics", ultralytics.__version__)'
  echo "cores $(nproc)"
} > "$OUT/machine.txt" 2>&1
cat "$OUT/machine.txt"
if [ ! -f /tmp/zoo/data/det.yaml ] || [ ! -d /tmp/zoo/data/cls/train ]; then
  began=$(date +%s)
  python3 -m zoo.build data > "$OUT/data.log" 2>&1 || { tail -20 "$OUT/data.log"; exit 1; }
  echo "data drawn in $(( $(date +%s) - began )) s"
fi
declare -A BATCH=([det]=32 [seg]=32 [pose]=32 [det26]=32 [cls]=128)
KINDS=${KINDS:-det seg pose det26 cls}
for kind in $KINDS; do
  mkdir -p "$OUT/$kind"
  start=()
  for f in "$START/$kind/last.pt" "$START/$kind/weights/last.pt"; do
    if [ -n "$START" ] && [ -f "$f" ]; then start=(--start "$f"); break; fi
  done
  if [ "$kind" = cls ] && [ -n "$START" ] && [ -f "$START/det/last.pt" ]; then
    start=(--init "$START/det/last.pt")  # the classifier starts from the first call's detector backbone
  fi
  python3 -m zoo.build train "$kind" --device 0 --workers "${WORKERS:-3}" --batch "${BATCH[$kind]}" --out "$OUT/$kind" \
    --hours "$HOURS" "${start[@]}" > "$OUT/$kind/train.log" 2>&1 &
done
while [ -n "$(jobs -r)" ]; do
  sleep 30
  for kind in $KINDS; do
    printf '%s: %s\n' "$kind" "$(grep -a 'saved at\|trained in\|Error' "$OUT/$kind/train.log" | tail -1)"
  done
done
wait
for kind in $KINDS; do tail -3 "$OUT/$kind/train.log"; done

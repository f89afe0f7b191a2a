#!/usr/bin/env bash
# Packs what the GPU machine lacks for benchmarks/gpu.py with Roboflow Inference beside this server:
# two ready-to-import package folders, installed here for that machine's Python 3.12 and x86-64,
#   site/    ray[serve], onnxruntime-gpu and this project's runtime dependencies (with the [gpu]
#            extra: nvImageCodec and the nvJPEG it loads)
#   rfsite/  inference-gpu and the parts of its dependency tree that `import inference` needs
#            (its own fastapi/pydantic; torch, numpy, OpenCV and onnxruntime come from the machine
#            and from site/)
# as one tar.xz split into parts of PART_MB (default 45) under OUT_DIR/p0 .. pN. xz shrinks
# onnxruntime-gpu's CUDA provider about twice as much as the wheels' zip does, so fewer calls
# carry it. Needs Roboflow Inference installed here in .venv-rf (its pins are read from there).
#
# usage (repo root):  bash benchmarks/gpu_pack.sh [OUT_DIR]      (default .gpu; keep it out of git)
# on the machine:     bash benchmarks/gpu_device.sh install      (after every part is in /tmp/w)
set -euo pipefail
out=${1:-.gpu}
work=$(mktemp -d)
plat=(--only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64
      --platform manylinux_2_27_x86_64 --platform manylinux_2_26_x86_64 --platform manylinux_2_24_x86_64
      --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_5_x86_64
      --platform manylinux1_x86_64 --platform manylinux_2_31_x86_64 --platform manylinux_2_34_x86_64
      --platform linux_x86_64 --platform any)
# On the machine's image already (../shared/GPU.md, KINDS.md): left out of site/.
on_image="numpy aiohttp pyyaml multidict msgpack protobuf charset_normalizer wrapt propcache frozenlist filelock
  requests urllib3 idna certifi attrs yarl aiosignal aiohappyeyeballs packaging jinja2 markupsafe click six
  typing_extensions flatbuffers prometheus_client pyparsing psutil virtualenv distlib"

python3 -m pip download -q "${plat[@]}" -d "$work/base" "ray[serve]==2.60.0" "onnxruntime-gpu==1.31.1" \
  simplejpeg orjson pybase64 onnxconverter-common swagger-ui-bundle py-spy \
  "nvidia-nvimgcodec-cu13==0.9.0.20" "nvidia-nvjpeg==13.3.2.43" 2>&1 | grep -v "^WARNING: Location" || true
for skip in $on_image; do rm -f "$work/base/${skip}"-[0-9]*.whl; done

# Roboflow's side: the distributions `import inference` loads (read from .venv-rf by importing its
# HTTP app), less what the image has, less torch/OpenCV/onnxruntime; sdist-only ones built here.
.venv-rf/bin/python benchmarks/gpu_pack_rf.py > "$work/rf.txt"
mkdir -p "$work/rf"
while read -r req; do
  python3 -m pip download -q --no-deps "${plat[@]}" -d "$work/rf" "$req" > /dev/null 2>&1 \
    || python3 -m pip wheel -q --no-deps -w "$work/rf" "$req" > /dev/null
done < "$work/rf.txt"
rm -f "$work"/rf/pybase64-*cp311*.whl && cp "$work"/base/pybase64-*.whl "$work/rf/"  # no cp312 wheel of its pin

mkdir -p "$work/stage"
python3 -m pip install -q --no-index --no-deps --no-compile "${plat[@]}" --target "$work/stage/site" "$work"/base/*.whl
rm -f "$work/stage/site/nvidia/__init__.py"  # nvidia.* stays a namespace shared with the machine's own nvidia wheels
python3 -m pip install -q --no-index --no-deps --no-compile "${plat[@]}" --target "$work/stage/rfsite" "$work"/rf/*.whl
tar -cf - -C "$work/stage" site rfsite | xz -5 -T0 > "$work/bundle.tar.xz"
rm -rf "$out" && mkdir -p "$out"
split -b "${PART_MB:-45}m" -d -a 2 "$work/bundle.tar.xz" "$work/bundle.tar.xz.part"
n=0
for part in "$work"/bundle.tar.xz.part*; do
  mkdir -p "$out/p$n" && mv "$part" "$out/p$n/"
  n=$((n + 1))
done
rm -rf "$work"
echo "packed $n parts under $out/p0 .. $out/p$((n - 1))"

#!/usr/bin/env bash
# Everything one GPU call needs, made here (no GPU), in git-ignored folders of the checkout:
#   .ortgpu/partNN   the onnxruntime-gpu wheel for Python 3.12 in parts (../shared/tools/ort-gpu-parts.sh)
#   .whl/            the wheels the device image lacks (pydantic and what it needs)
#   .data/           the CIFAR-10 archive
#   .gpu/artifacts/  the reference artifacts (vit_fp32, vit_static_int8, vit_dynamic_int8), built here
# Each call carries the working tree plus its carry list within 64 MiB; the part size is chosen so.
# Then prints the device calls to issue, consecutively, in one batch (the machine stays warm ~30 s).
#
#   bash benchmarks/gpu/prepare.sh [ORT_GPU_VERSION]
set -euo pipefail
cd "$(dirname "$0")/../.."
ver=${1:-1.31.1}
mib=$((1024 * 1024))
for d in .ortgpu .whl .data .gpu; do
  grep -qx "/$d/" .git/info/exclude 2>/dev/null || echo "/$d/" >>.git/info/exclude
done

# What travels on every call: tracked files and untracked files git does not ignore.
tree=$( (git ls-files -z; git ls-files -z --others --exclude-standard) | xargs -0 -r stat -c %s 2>/dev/null | awk '{s += $1} END {print s + 0}')
part_mib=$(((64 * mib - tree) / mib - 3))
echo "working tree: $((tree / mib)) MiB; wheel parts of $part_mib MiB"
[ "$part_mib" -ge 8 ] || { echo "the working tree leaves no room for wheel parts: ignore or remove large files" >&2; exit 1; }
bash ../shared/tools/ort-gpu-parts.sh "$ver" "${part_mib}M" >/dev/null
(cd .ortgpu && ls onnxruntime_gpu-"$ver"-*.whl | head -n 1 >WHEEL)

# pydantic's versions as installed here (pydantic-core must match pydantic exactly).
mkdir -p .whl && rm -f .whl/*.whl
pins=$(python3 -m pip list --format=freeze 2>/dev/null | grep -iE '^(pydantic|pydantic[-_]core|annotated[-_]types|typing[-_]inspection)==' || true)
[ -n "$pins" ] || pins="pydantic pydantic-core annotated-types typing-inspection"
# shellcheck disable=SC2086
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 -d .whl $pins

mkdir -p .data && cp -u ../shared/data/cifar10-jpg.tar.gz .data/

# The reference artifacts: built on the CPU here, so the GPU's minutes go to measuring.
mkdir -p .gpu/artifacts
work=$(mktemp -d)
python3 benchmarks/gpu/recipes.py "$work" >/dev/null
vitdeploy data get cifar10 --from .data/cifar10-jpg.tar.gz >/dev/null
for r in vit_fp32 vit_static_int8 vit_dynamic_int8; do
  vitdeploy build "$work/$r.yaml" --device cpu >/dev/null
  cp "$work/artifacts/$r.onnx" "$work/artifacts/$r.json" .gpu/artifacts/  # what run.sh times
done
rm -rf "$work"

size() { du -sb "$@" | awk '{s += $1} END {print int(s / 1048576)}'; }
last_carry=(.whl .data .gpu .ortgpu/WHEEL)
echo "measuring call carries $(($(size "${last_carry[@]}") + tree / mib)) MiB of 64"
echo
echo "Device calls, consecutive, in one batch (device tool 'run'):"
for p in .ortgpu/part*; do
  echo "  run  carry=[\"$p\"]  command: mkdir -p /tmp/parts && cp $p /tmp/parts/"
done
echo "  run  carry=[\".whl\", \".data\", \".gpu\", \".ortgpu/WHEEL\"]  timeout_s=560  command: bash benchmarks/gpu/run.sh"
echo "Then: tar -xzf <files_at>/results.tar.gz; the teacher's weights and manifest lie beside it when trained."

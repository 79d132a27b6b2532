#!/usr/bin/env bash
# GPU measurements (H100): vit_base and the reference artifacts on the CUDA and TensorRT providers,
# PyTorch eager and AMP beside them. Not yet run on a GPU. Preparation, on the build machine:
#   bash ../shared/tools/ort-gpu-parts.sh            # onnxruntime-gpu 1.31.1 -> .ortgpu/part*
#   mkdir -p .data && cp ../shared/data/cifar10-jpg.tar.gz .data/   (.data/ and .whl/ are git-ignored)
#   pip download pydantic, pydantic-core, annotated-types, typing-inspection (cp312 manylinux) -d .whl
# Device calls, issued together in one batch (the machine stays warm ~30 s between calls):
#   one call per part: mkdir -p /tmp/parts && cp .ortgpu/partNN /tmp/parts/   (carry: [".ortgpu/partNN"])
#   last call: bash benchmarks/gpu_h100.sh                       (carry: [".data", ".whl"])
set -euo pipefail
out=${OUT:-runs/gpu}
mkdir -p "$out"
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
wheel=/tmp/onnxruntime_gpu-1.31.1-cp312-cp312-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl
cat /tmp/parts/part* > "$wheel"
python3 -m pip install -q --no-index --no-deps --target /tmp/ortgpu "$wheel"
export PYTHONPATH=/tmp/ortgpu:/tmp/site:$PWD PYTHONUNBUFFERED=1
vd() { python3 -m vitdeploy.cli "$@"; }
vd data get cifar10 --from .data/cifar10-jpg.tar.gz
vd build recipes/vit_base_gpu_fp32.yaml --device cuda 2>&1 | tee "$out/build_vit_base.txt"
vd convert artifacts/vit_base_gpu_fp32.onnx --fp16
vd bench artifacts/vit_base_gpu_fp32.onnx artifacts/vit_base_gpu_fp32.fp16.onnx --provider cuda --batch 1,256 \
  --duration 5 --rounds 3 --torch recipes/vit_base_gpu_fp32.yaml --torch-amp --json "$out/vit_base_cuda.json" \
  2>&1 | tee "$out/vit_base_cuda.txt"
vd bench artifacts/vit_base_gpu_fp32.fp16.onnx --provider cuda --batch 1,256 --cuda-graph --duration 5 \
  --profile "$out/profiles" --json "$out/vit_base_cuda_graph.json" 2>&1 | tee "$out/vit_base_cuda_graph.txt"
# The reference model's artifacts on the CUDA provider: INT8 ones are expected to be labelled "CPU fallback".
for r in vit_fp32 vit_static_int8 vit_dynamic_int8; do vd build recipes/$r.yaml --device cuda > "$out/build_$r.txt" 2>&1; done
vd bench artifacts/vit_static_int8.onnx artifacts/vit_dynamic_int8.onnx artifacts/vit_fp32.onnx --provider cuda,tensorrt \
  --batch 1,256 --duration 3 --json "$out/reference_cuda.json" 2>&1 | tee "$out/reference_cuda.txt"

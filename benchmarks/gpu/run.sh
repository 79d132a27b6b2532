#!/usr/bin/env bash
# The GPU run, one command: the CUDA bench table, float16 accuracy, then the teacher as time allows.
#
#   bash benchmarks/gpu/run.sh                   # on the GPU machine, after prepare.sh's part calls
#   bash benchmarks/gpu/run.sh --dry-run DATA    # the same steps on the CPU: tiny models, one batch,
#                                                # DATA an ImageFolder (train/ and test/) imported as cifar10
#
# Every step writes its log as it goes and the results are packed into $OUT after each step, so a
# call that runs out of time still brings back what was measured. $OUT receives at most four files
# (the device tool returns eight): results.tar.gz, progress.log and, when trained, the teacher's
# weights and manifest. BUDGET_S (default 470) bounds the whole run; the teacher gets what is left.
# A step that fails is logged and the next one runs.
set -uo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
start=$(date +%s)
budget=${BUDGET_S:-470}
dry=0
if [ "${1:-}" = "--dry-run" ]; then
  dry=1
  data=${2:?--dry-run needs an ImageFolder (train/, test/) to stand in for CIFAR-10}
fi
export PYTHONUNBUFFERED=1
out=${OUT:-$root/runs/gpu}
work=${GPU_WORK:-/tmp/vitdeploy-gpu}
mkdir -p "$out" "$work/results"
export VITDEPLOY_CACHE=$work/cache
log=$out/progress.log
: >"$log"

if [ $dry = 1 ]; then
  provider=cpu device=cpu batches=1 sweep=1 duration=0.2 min_iters=3 graph="" compile="" fresh="--fresh"
else
  provider=cuda device=cuda batches=1,8,64,256 sweep=1,256 duration=1.5 min_iters=10 graph=--cuda-graph
  compile=--torch-compile fresh=""
  data=$root/.data/cifar10-jpg.tar.gz
fi

say() { echo "[$(($(date +%s) - start)) s] $*" | tee -a "$log"; }
left() { echo $((budget - ($(date +%s) - start))); }
pack() { tar -czf "$out/results.tar.gz.tmp" -C "$work" results && mv "$out/results.tar.gz.tmp" "$out/results.tar.gz"; }
# step NAME SECONDS_NEEDED CMD...: runs CMD when that much time is left, its output in results/NAME.txt.
step() {
  local name=$1 need=$2
  shift 2
  if [ "$(left)" -lt "$need" ]; then
    say "$name: skipped, $(left) s left of the budget (needs about $need s)"
    return 1
  fi
  local t0
  t0=$(date +%s)
  "$@" >"$work/results/$name.txt" 2>&1
  local rc=$?
  printf '%s\t%s\t%s\n' "$name" "$rc" "$(($(date +%s) - t0))" >>"$work/results/steps.tsv"
  say "$name: exit $rc in $(($(date +%s) - t0)) s; $(tail -n 1 "$work/results/$name.txt" | cut -c1-160)"
  pack
  return $rc
}
vd() { python3 -m vitdeploy.cli "$@"; }

setup() {
  # The device image has torch, timm, onnx and CPU onnxruntime; pydantic and onnxruntime-gpu travel.
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || return 1
  local wheel
  wheel=/tmp/$(cat .ortgpu/WHEEL 2>/dev/null || echo onnxruntime_gpu-1.31.1-cp312-cp312-manylinux_2_28_x86_64.whl)
  cat /tmp/parts/part* >"$wheel" && python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/ortgpu "$wheel"
}

environment() {
  nvidia-smi || true
  python3 - <<'EOF'
import platform, torch, timm, onnx, onnxruntime as ort
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda, "timm", timm.__version__)
print("onnx", onnx.__version__, "onnxruntime", ort.__version__, ort.__file__)
print("providers", ort.get_available_providers())
if torch.cuda.is_available():
    print("gpu", torch.cuda.get_device_name(0))
EOF
}

if [ $dry = 0 ]; then
  export PYTHONPATH=/tmp/ortgpu:/tmp/site:$root
  step setup 30 setup || say "setup failed: the CUDA provider cells will say skipped"
else
  export PYTHONPATH=$root${PYTHONPATH:+:$PYTHONPATH}
fi
step environment 5 environment
step data 20 vd data get cifar10 --from "$data"
rec=$work/recipes
step recipes 5 python3 benchmarks/gpu/recipes.py "$rec" $([ $dry = 1 ] && echo --dry-run)
art=$rec/artifacts

# 1. ViT-B/16 and ViT-S/16 at 224x224: FP32 and FP16 on the CUDA provider (I/O binding), with and
#    without CUDA graphs; PyTorch eager, AMP and torch.compile beside them.
for m in vit_base_gpu_fp32 vit_small_gpu_fp32; do
  step "build_$m" 40 vd build "$rec/$m.yaml" --device $device $fresh
  step "fp16_$m" 20 vd convert "$art/$m.onnx" --fp16
done
speed=("$art/vit_base_gpu_fp32.onnx" "$art/vit_base_gpu_fp32.fp16.onnx" "$art/vit_small_gpu_fp32.onnx" "$art/vit_small_gpu_fp32.fp16.onnx")
step bench_iobinding 60 vd bench "${speed[@]}" --provider $provider --batch $batches --duration $duration \
  --min-iters $min_iters --warmup 5 --json "$work/results/bench_iobinding.json"
[ -n "$graph" ] && step bench_cuda_graph 60 vd bench "${speed[@]}" --provider $provider --batch $batches $graph \
  --duration $duration --min-iters $min_iters --warmup 5 --json "$work/results/bench_cuda_graph.json"
for m in vit_base_gpu_fp32 vit_small_gpu_fp32; do
  step "bench_torch_$m" 90 vd bench "$art/$m.fp16.onnx" --provider $provider --batch $sweep $graph --duration $duration \
    --min-iters $min_iters --warmup 5 --rounds 2 --torch "$rec/$m.yaml" --torch-amp $compile \
    --json "$work/results/bench_torch_$m.json"
done

# 2. The reference teacher and the shipped INT8 files on the CUDA provider: where INT8 operators
#    fall back to the CPU, the table's note says which ran where.
ref=()
for r in vit_fp32 vit_static_int8 vit_dynamic_int8; do
  if [ $dry = 0 ] && [ -f ".gpu/artifacts/$r.onnx" ]; then  # built by prepare.sh: no device time spent
    mkdir -p "$art" && cp ".gpu/artifacts/$r.onnx" ".gpu/artifacts/$r.json" "$art/"
  else
    step "build_$r" 40 vd build "$rec/$r.yaml" --device $device $fresh
  fi
  ref+=("$art/$r.onnx")
done
step bench_reference 60 vd bench "${ref[@]}" --provider $provider --batch $sweep --duration $duration \
  --min-iters $min_iters --warmup 5 --json "$work/results/bench_reference.json"

# 3. Float16 that keeps its answers: the teacher on all test images, ViT-B/16 on 1,000.
step fp16_teacher 30 vd convert "$art/vit_fp32.onnx" --fp16 -o "$art/vit_fp32.fp16.onnx"
step agreement_teacher 40 python3 benchmarks/gpu/fp16_agreement.py "$art/vit_fp32.onnx" "$art/vit_fp32.fp16.onnx" \
  --provider $provider --json "$work/results/fp16_teacher.json"
step agreement_vit_base 40 python3 benchmarks/gpu/fp16_agreement.py "$art/vit_base_gpu_fp32.onnx" \
  "$art/vit_base_gpu_fp32.fp16.onnx" --provider $provider --images $([ $dry = 1 ] && echo 16 || echo 1000) \
  --batch 64 --json "$work/results/fp16_vit_base.json"

# 4. The teacher, with what is left: export, top-1 on the 10,000 test images and packing take ~60 s.
minutes=$(python3 -c "print(max(0.5, round(($(left) - 75) / 60, 2)))")
python3 benchmarks/gpu/recipes.py "$rec" --teacher-minutes "$minutes" $([ $dry = 1 ] && echo --dry-run) >/dev/null
say "teacher: max_minutes $minutes"
if step teacher 90 vd build "$rec/teacher_vit_cifar10.yaml" --device $device $fresh; then
  cp "$art/teacher_vit_cifar10.safetensors" "$out/teacher_vit_cifar10.safetensors"
  cp "$art/teacher_vit_cifar10.json" "$out/teacher_vit_cifar10.json"
fi
pack
say "done: $(wc -l <"$work/results/steps.tsv") steps, $(awk -F'\t' '$2 != 0' "$work/results/steps.tsv" | wc -l) failed"

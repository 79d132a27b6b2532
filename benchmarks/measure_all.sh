#!/usr/bin/env bash
# Reproduces the README's results on this machine (2 threads). Logs go to runs/measure/.
# Needs: the CIFAR-10 cache (vitdeploy data get cifar10 --from ...) and the committed teacher.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p runs/measure
log=runs/measure
for r in deit_int8 vit_fp32 vit_dynamic_int8; do
  /usr/bin/time -v vitdeploy build recipes/$r.yaml --device cpu > $log/build_$r.txt 2> $log/build_$r.err
  grep -E "Elapsed|Maximum resident" $log/build_$r.err | sed "s/^/$r: /"
done
for i in 1 2 3; do
  vitdeploy bench artifacts/deit_int8.onnx artifacts/vit_fp32.onnx artifacts/vit_dynamic_int8.onnx \
    --batch 1,16 --threads 2 --duration 10 --torch recipes/vit_fp32.yaml --baseline vit_fp32 \
    --json $log/bench_cpu_$i.json --csv $log/bench_cpu_$i.csv > $log/bench_cpu_$i.txt 2>&1
done
cat $log/bench_cpu_1.txt
python benchmarks/overhead.py artifacts/deit_int8.onnx --batch 16 --threads 2 --seconds 10 | tee $log/overhead.txt
python benchmarks/quant_grid.py recipes/deit_int8.yaml --samples 10000 --speed > $log/grid.txt 2>&1
grep -a "variant=" $log/grid.txt

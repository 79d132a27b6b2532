#!/usr/bin/env bash
# Reproduces the README's CPU results on this machine (2 threads). Logs go to runs/measure/.
# Needs: the CIFAR-10 cache (vitdeploy data get cifar10 --from ...) and the committed teacher.
# Run it on an otherwise idle machine: anything else running shows up in every number.
set -euo pipefail
cd "$(dirname "$0")/.."
log=runs/measure
mkdir -p $log
for r in vit_static_int8 vit_fp32 vit_dynamic_int8; do
  /usr/bin/time -v vitdeploy build recipes/$r.yaml --device cpu > $log/build_$r.txt 2> $log/build_$r.err
  grep -E "Elapsed|Maximum resident" $log/build_$r.err | sed "s/^/$r: /"
done
models="artifacts/vit_fp32.onnx artifacts/vit_static_int8.onnx artifacts/vit_dynamic_int8.onnx"
# Three back-to-back runs: each measures every cell, PyTorch eager included, in 5 round-robin rounds of 2 s.
for i in 1 2 3; do
  vitdeploy bench $models --batch 1,16 --threads 2 --duration 2 --rounds 5 --baseline vit_fp32 \
    --torch recipes/vit_fp32.yaml --json $log/bench_cpu_$i.json --csv $log/bench_cpu_$i.csv > $log/bench_cpu_$i.txt 2>&1
done
python benchmarks/spread.py $log/bench_cpu_{1,2,3}.json | tee $log/spread.txt
# Where the time goes: ORT's per-op profiles, once.
vitdeploy bench $models --batch 1,16 --threads 2 --duration 1 --profile $log/profiles > $log/profiles.txt 2>&1
cat $log/profiles.txt
python benchmarks/overhead.py artifacts/vit_dynamic_int8.onnx --batch 16 --threads 2 | tee $log/overhead.txt
python benchmarks/quant_grid.py recipes/vit_static_int8.yaml --samples 10000 --speed > $log/grid.txt 2>&1
grep -a "variant=" $log/grid.txt
# Why INT8 gains little here (the kernels on this model's shapes), and how steady the machine is.
python benchmarks/gemm_ceiling.py | tee $log/gemm_ceiling.txt
for b in 1 16; do python benchmarks/drift.py artifacts/vit_fp32.onnx --batch $b | tee $log/drift_b$b.txt; done

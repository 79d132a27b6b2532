#!/usr/bin/env bash
# Build every row of the paper's table from the reference teacher, one recipe after another,
# with /usr/bin/time around each (wall time and peak RSS). Logs: runs/build/<recipe>.log.
# deit_base's distilled weights become students/deit_cifar10.safetensors, which deit_int8
# starts from; deit_tiny's become students/deit_tiny_cifar10.safetensors, for deit_tiny_int8.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p runs/build
recipes=(${RECIPES:-deit_base vit_prune_r0.2 vit_nystrom_m32 vit_nystrom_m64 deit_tiny vit_prune_r0.1 vit_nystrom_m24 vit_fp32 vit_dynamic_int8 vit_static_int8 deit_int8 deit_tiny_int8})
for r in "${recipes[@]}"; do
    if [ "$r" = deit_int8 ] && [ ! -f students/deit_cifar10.safetensors ]; then
        mkdir -p students && cp artifacts/deit_base.safetensors students/deit_cifar10.safetensors
    fi
    if [ "$r" = deit_tiny_int8 ] && [ ! -f students/deit_tiny_cifar10.safetensors ]; then
        mkdir -p students && cp artifacts/deit_tiny.safetensors students/deit_tiny_cifar10.safetensors
    fi
    echo "== $r $(date +%T)"
    /usr/bin/time -v vitdeploy build "recipes/$r.yaml" --device cpu >"runs/build/$r.log" 2>&1 || echo "!! $r failed"
    grep -E "Elapsed|Maximum resident" "runs/build/$r.log" | sed 's/^\s*/   /'
done

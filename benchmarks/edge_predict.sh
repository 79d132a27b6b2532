#!/usr/bin/env bash
# `vitdeploy predict` over the 10,000 CIFAR-10 test JPEGs beside `vitdeploy bench` on the same
# artifact, batch, provider and threads: top-1 (against the build manifest), throughput, and
# the predictor's peak memory (whole process, from the kernel).
#
#   bash benchmarks/edge_predict.sh [ARTIFACT] [BATCH] [THREADS] [PROVIDER]
set -euo pipefail
cd "$(dirname "$0")/.."
artifact=${1:-artifacts/deit_int8.onnx}
batch=${2:-16}
threads=${3:-2}
provider=${4:-cpu}
images=${IMAGES:-/tmp/vitdeploy-cifar10-jpg}
if [ ! -d "$images/cifar10/test" ]; then
  mkdir -p "$images"
  tar xzf ../shared/data/cifar10-jpg.tar.gz -C "$images" --wildcards '*test/*'
fi
bundle="${artifact%.onnx}.bundle"
vitdeploy package "$artifact" --out "$bundle" --bench none
python - "$artifact" <<'PY'
import json, sys
from pathlib import Path
m = json.loads(Path(sys.argv[1]).with_suffix(".json").read_text())
t = m["evaluate"]["top1"]
print(f"manifest top-1: {t.get('onnx_int8', t['onnx_fp32']):.2%}")
PY
for round in 1 2 3; do
  /usr/bin/time -f "predict peak RSS: %M KB" vitdeploy predict "$bundle" "$images/cifar10/test" \
    --batch "$batch" --threads "$threads" --provider "$provider" --csv -o /tmp/vitdeploy-predict.csv
  vitdeploy bench "$artifact" --batch "$batch" --threads "$threads" --provider "$provider" --duration 5 | grep "│"
done

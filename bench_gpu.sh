#!/usr/bin/env bash
# The GPU half of BENCHMARKS.md, and the GPU-only code paths' tests, in one run of at most
# 9.5 minutes (each step has its own time limit; they add up to 580 s), for a lent GPU machine:
#
#   device tool: run(command="bash bench_gpu.sh", carry=[".whl"], timeout_s=600)
#
# where .whl/ holds an ml_collections wheel, which that machine's image lacks (.whl/ is git-ignored):
#
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 -d .whl ml_collections==1.1.0
#
# Results land in $OUT (the device tool's folder) or ./bench_gpu_out:
# one JSON object per line per subcommand, the decoding figure, and the logs.
# BENCH_SIZE=tiny PYTHON=.venv/bin/python rehearses the whole script in a few minutes on any machine.
set -uo pipefail
out="${OUT:-bench_gpu_out}"
mkdir -p "$out"
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "bench_gpu.sh: cannot install the carried wheels" >&2; exit 1; }
  export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
fi
export PYTHONUNBUFFERED=1 PYTHONPATH=".:${PYTHONPATH:-}"
python="${PYTHON:-python3}"

if [ "${BENCH_SIZE:-table}" = tiny ]; then
  train=(--config configs/tiny.py --config.model.n_layer=1 --config.model.n_embd=32 --config.batch_size=2
         --steps 1 --warmup 1)
  generate=(--size tiny --contexts 16,200 --steps 1 --warmup 1)
  wkv=(--shape 2,64,2,8 --chunks 16 --repeats 1 --warmup 1)
  attention=(--attention_shape 1,64,2,1,8 --windows 16,global --repeats 1 --warmup 1)
  vs_torch=(--size tiny --repeats 1 --warmup 1)
else   # the table size: 8 x 768, 8 heads, block 1024, batch 16, bf16 on the GPU
  train=(--config configs/tinystories.py --steps 10 --warmup 3)
  generate=(--size table --steps 8)
  wkv=()
  attention=(--attention_shape 16,1024,8,2,96 --windows 256,global)
  vs_torch=(--size table)
fi

step() {   # step NAME SECONDS bench.py-ARGS...: one JSON line per measurement into $out/NAME.jsonl
  local name=$1 limit=$2
  shift 2
  echo "== $name: bench.py $*" >> "$out/stderr.log"
  timeout "$limit" "$python" bench.py "$@" --json 2>> "$out/stderr.log" | grep '^{' >> "$out/$name.jsonl"
  echo "$name: exit ${PIPESTATUS[0]}" | tee -a "$out/stderr.log"
}

(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || echo "no nvidia-smi") > "$out/device.txt" 2>&1
# The code paths only a GPU takes: bf16 compute, cuDNN attention (with its fallback), the fused loss.
timeout 90 "$python" -m pytest -q -x tests/test_output_head.py tests/test_wkv.py \
  "tests/test_train.py::test_bfloat16_compute_path_tracks_float32" \
  "tests/test_train.py::test_trainer_loss_and_gradients_equal_autodiff_through_the_logits" \
  "tests/test_model.py::test_bfloat16_compute_tracks_float32" > "$out/pytest.log" 2>&1
echo "pytest: exit $?" | tee -a "$out/stderr.log"
for family in hybrid rwkv gpt; do
  step train 85 train "${train[@]}" --config.model.family="$family"
done
step wkv 45 wkv "${wkv[@]}"
step attention 30 attention "${attention[@]}"
step generate 100 generate "${generate[@]}" --out "$out/generate"
step vs_torch 60 vs-torch "${vs_torch[@]}"

#!/usr/bin/env bash
# The GPU half of BENCHMARKS.md, and the tests of the code paths only a GPU takes, in one run of
# at most 9.5 minutes (each step has its own time limit; they add up to 580 s). On a machine
# with an NVIDIA GPU and JAX with CUDA installed (pip install -e '.[test]' "jax[cuda12]"):
#
#   bash benchmarks/gpu.sh                      # results in ./bench_gpu_out (or $OUT)
#
# Results: one JSON object per line per subcommand, the decoding figure, pytest's log and the
# commands' stderr. If the machine cannot install packages, put wheels of what it lacks (e.g.
# ml_collections) in .whl/ first; they are installed into /tmp/site and put on PYTHONPATH:
#
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 -d .whl ml_collections==1.1.0
#
# BENCH_SIZE=tiny PYTHON=.venv/bin/python bash benchmarks/gpu.sh rehearses the whole script in a
# few minutes on any machine.
set -uo pipefail
cd "$(dirname "$0")/.."
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
else   # the issue's table size: 8 x 768, 8 heads, block 1024, batch 16, bf16 on the GPU
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
timeout 90 "$python" -m pytest -q -x tests/layers/test_output_head.py tests/layers/test_attention.py \
  tests/test_wkv.py tests/training/test_steps.py \
  "tests/families/test_causal.py::test_bfloat16_compute_tracks_float32" > "$out/pytest.log" 2>&1
echo "pytest: exit $?" | tee -a "$out/stderr.log"
for family in hybrid rwkv gpt; do
  step train 85 train "${train[@]}" --config.model.family="$family"
done
step wkv 45 wkv "${wkv[@]}"
step attention 30 attention "${attention[@]}"
step generate 100 generate "${generate[@]}" --out "$out/generate"
step vs_torch 60 vs-torch "${vs_torch[@]}"

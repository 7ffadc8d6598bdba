"""bench.py train: the trainer's sharded step (`ShardedSteps`) on a random batch: step time,
tokens/s, model FLOP/s and MFU, peak memory.

--compile_only compiles the step and runs nothing: per-device memory (XLA's memory analysis:
arguments, outputs, temporaries) and FLOPs (its cost analysis). With --topology NAME it compiles
for that TPU topology's devices instead of this machine's, on a CPU-only machine (libtpu
provides the compiler), and fails with one line when the step does not fit a chip's memory:

    python bench.py train --config configs/tiny.py --compile_only --topology v5e:2x2 --config.mesh.fsdp=4
"""

from __future__ import annotations

import jax
import numpy as np

from benchmarks.common import FLAGS, emit, peak_memory, timed
from microrwkv_jax.checkpoints import ParamCodec
from microrwkv_jax.data.tokenizers import tokenizer_vocab_size
from microrwkv_jax.families import abstract_model, build_model, get_family, model_config_from, train_flops_per_token
from microrwkv_jax.flops import device_peak_flops
from microrwkv_jax.sharding import make_mesh
from microrwkv_jax.training.steps import ShardedSteps

# Memory of one device (jax's `device_kind`) of the TPUs whose figures are public: v5e 16 GiB,
# v5p 95 GiB, v6e (Trillium) 32 GiB of HBM per chip, one device per chip.
TPU_HBM_BYTES = {"TPU v5 lite": 16 * 2**30, "TPU v5": 95 * 2**30, "TPU v6 lite": 32 * 2**30}


def tpu_topology_devices(name: str) -> list:
    """The devices of TPU topology `name` (e.g. "v5e:2x2"), described by libtpu without a TPU."""
    from jax.experimental import topologies
    try:
        return list(topologies.get_topology_desc(topology_name=name, platform="tpu").devices)
    except Exception as err:      # no libtpu, or a name it does not know
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise SystemExit(f"bench.py train: --topology {name}: cannot describe this TPU topology ({reason}); it "
                         "needs libtpu, the tpu-compile extra (pip install -e '.[tpu-compile]')") from None


def setup(cfg, devices) -> tuple:
    """(model config, codec, ShardedSteps, the record of its shapes) of the config's train step on `devices`."""
    mc = model_config_from(cfg.model, tokenizer_vocab_size(cfg.tokenizer), devices[0].platform)
    codec = ParamCodec(abstract_model(mc))
    steps = ShardedSteps(codec, cfg, get_family(mc.arch).param_axes, make_mesh(cfg.get("mesh"), devices))
    shapes = {"family": cfg.model.family, "arch": mc.arch, "dtype": mc.dtype,
              "params": sum(int(np.prod(s)) for s in codec.shapes.values()), "batch": cfg.batch_size,
              "grad_accum_steps": cfg.grad_accum_steps, "block": mc.block_size, "n_layer": mc.n_layer,
              "n_embd": mc.n_embd, "mesh": dict(steps.mesh.shape)}
    return mc, codec, steps, shapes


def random_batch(steps: ShardedSteps, batch_shape, vocab: int):
    return jax.device_put(np.random.default_rng(0).integers(0, vocab, batch_shape).astype(np.int32),
                          steps.batch_sharding)


def run() -> None:
    cfg = FLAGS.config
    with cfg.unlocked():
        if FLAGS.dtype != "auto":
            cfg.model.dtype = FLAGS.dtype
    if FLAGS.topology and not FLAGS.compile_only:
        raise SystemExit("bench.py train: --topology compiles for a TPU this machine does not have: add --compile_only")
    devices = tpu_topology_devices(FLAGS.topology) if FLAGS.topology else jax.devices()
    platform = devices[0].platform
    mc, codec, steps, shapes = setup(cfg, devices)
    shapes = {"bench": "train", **shapes}
    batch_shape = (cfg.batch_size, mc.block_size + 1)
    if FLAGS.compile_only:
        compile_only(steps, batch_shape, {**shapes, "target": FLAGS.topology or platform,
                                          "target_device": devices[0].device_kind, "target_devices": len(devices)})
        return

    params, opt_state = steps.init(codec.flat(build_model(mc, seed=0)))
    batch = random_batch(steps, batch_shape, mc.vocab_size)
    state = [params, opt_state]

    def run_step():
        state[0], state[1], metrics = steps.train_step(state[0], state[1], batch, np.float32(cfg.learning_rate))
        metrics["loss"].block_until_ready()

    seconds = timed(run_step, FLAGS.warmup, FLAGS.steps)
    tokens = cfg.batch_size * mc.block_size
    tok_s = tokens / seconds
    fpt = train_flops_per_token(mc, mc.block_size)
    peak = FLAGS.peak_flops or device_peak_flops()
    emit({**shapes, "step_ms": seconds * 1e3, "tokens_per_s": tok_s,
          "model_tflops_per_s": fpt * tok_s / 1e12, "mfu": (fpt * tok_s / peak) if peak else None,
          **peak_memory()})


def compile_only(steps: ShardedSteps, batch_shape, record: dict) -> None:
    """Compile the train step for `steps.mesh`'s devices from abstract arguments (no memory) and
    emit XLA's per-device memory and FLOPs; fail with one line if it exceeds a TPU chip's HBM."""
    params, opt_state = steps.abstract()
    advice = "raise mesh.fsdp, lower batch_size or block_size, or use a larger topology"
    try:
        compiled = steps.compile(params, opt_state, batch_shape)
    except Exception as err:      # the TPU compiler refuses a program that cannot fit its HBM
        if "RESOURCE_EXHAUSTED" not in str(err):
            raise
        detail = str(err).split("RESOURCE_EXHAUSTED:")[-1].strip().splitlines()[0]
        raise SystemExit(f"bench.py train: the train step does not fit a {record['target_device']} ({detail}): "
                         f"{advice}") from None
    memory = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    total = (memory.argument_size_in_bytes + memory.output_size_in_bytes + memory.temp_size_in_bytes
             - memory.alias_size_in_bytes)
    hbm = TPU_HBM_BYTES.get(record["target_device"]) if record["target"] != "cpu" else None
    gib = lambda n: n / 2**30
    emit({**record, "argument_gib": gib(memory.argument_size_in_bytes), "output_gib": gib(memory.output_size_in_bytes),
          "temp_gib": gib(memory.temp_size_in_bytes), "alias_gib": gib(memory.alias_size_in_bytes),
          "total_gib": gib(total), "device_memory_gib": None if hbm is None else gib(hbm),
          "flops_per_device": float((cost or {}).get("flops", float("nan")))})
    if hbm is not None and total > hbm:
        raise SystemExit(f"bench.py train: the train step needs {gib(total):.1f} GiB per device, more than a "
                         f"{record['target_device']}'s {gib(hbm):.0f} GiB: {advice}")

"""bench.py vs-torch: the published architecture in JAX against the PyTorch reference of the
same weights, in the same run: forward, an AdamW train step, and the output head's three GEMMs
alone (what neither side can beat). PyTorch runs on CUDA with bf16 autocast where JAX computes
in bf16."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks.common import FLAGS, compute_dtype, emit, model_size, timed
from microrwkv_jax.checkpoints import ParamCodec, model_from_flat_params
from microrwkv_jax.families import FAMILIES, train_flops_per_token
from microrwkv_jax.training.steps import make_train_step


def run() -> None:
    import torch     # the test extra

    from torch_reference.published import PublishedTorchModel

    size = model_size(FLAGS.size)
    args = dict(vocab_size=50304, num_experts=4, num_active_experts=4, dim=size["n_embd"], dropout=0.0,
                bias=False, **size)
    batch, t = {"table": (16, 1024), "small": (8, 512), "tiny": (2, 64)}[FLAGS.size]
    dtype = compute_dtype()
    # PyTorch on the GPU when there is one, with bf16 autocast where JAX computes in bf16.
    device = "cuda" if torch.cuda.is_available() else "cpu"
    autocast = lambda: torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=dtype == "bfloat16")
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    torch.manual_seed(0)
    tmodel = PublishedTorchModel(args, chunked_wkv=True)   # the published code's chunked WKV
    # Into JAX through the published family's own checkpoint reader, as a .pth would go.
    state_dict = {k: v.numpy() for k, v in tmodel.state_dict().items()}
    config, flat = FAMILIES["published"].torch_checkpoint.read({"model": state_dict, "model_args": args})
    config = config.replace(dtype=dtype)
    model = model_from_flat_params(config, flat)
    tmodel = tmodel.to(device)
    codec = ParamCodec(model)
    idx = np.random.default_rng(0).integers(0, 50257, (batch, t + 1)).astype(np.int64)
    shapes = {"B": batch, "T": t, "n_layer": size["n_layer"], "n_embd": size["n_embd"], "dtype": dtype,
              "torch": torch.__version__, "torch_device": device, "torch_threads": torch.get_num_threads()}

    # forward
    x_t = torch.as_tensor(idx[:, :-1]).to(device)
    def torch_forward():
        with torch.no_grad(), autocast():
            tmodel(x_t)
        sync()
    params = codec.flat(model)
    fwd = jax.jit(lambda p, x: codec.model(p)(x))
    x_j = jnp.asarray(idx[:, :-1], jnp.int32)
    jax_s = timed(lambda: fwd(params, x_j).block_until_ready(), FLAGS.warmup, FLAGS.repeats)
    torch_s = timed(torch_forward, 1, FLAGS.repeats)
    emit({"bench": "vs-torch", "what": "forward", **shapes, "jax_ms": jax_s * 1e3, "torch_ms": torch_s * 1e3,
          "speedup": torch_s / jax_s})

    # train step: AdamW on the same loss, same batch
    opt = torch.optim.AdamW(tmodel.parameters(), lr=1e-4)
    y_t = torch.as_tensor(idx[:, 1:]).to(device)
    def torch_step():
        with autocast():
            logits = tmodel(x_t)
            loss = torch.nn.functional.cross_entropy(logits.view(-1, logits.size(-1)).float(), y_t.reshape(-1))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync()
    optimizer = optax.adamw(1e-4)
    opt_state = optimizer.init(params)
    step = jax.jit(make_train_step(codec, optimizer, 1, 0.0), donate_argnums=(0, 1))
    batch_j = jnp.asarray(idx, jnp.int32)
    st = [params, opt_state]
    def jax_step():
        st[0], st[1], m = step(st[0], st[1], batch_j)
        m["loss"].block_until_ready()
    jax_s = timed(jax_step, FLAGS.warmup, FLAGS.repeats)
    torch_s = timed(torch_step, 1, FLAGS.repeats)
    step_gflop = train_flops_per_token(config, t) * batch * t / 1e9    # model FLOPs, see flops.py
    emit({"bench": "vs-torch", "what": "train_step", **shapes, "jax_ms": jax_s * 1e3, "torch_ms": torch_s * 1e3,
          "speedup": torch_s / jax_s, "jax_tokens_per_s": batch * t / jax_s, "torch_tokens_per_s": batch * t / torch_s,
          "model_gflop": step_gflop, "jax_gflop_per_s": step_gflop / jax_s, "torch_gflop_per_s": step_gflop / torch_s})

    # What neither side can beat: the output head's three GEMMs (logits, d_x, d_embedding) alone.
    rng = np.random.default_rng(1)
    arrays = [rng.standard_normal(shape).astype(np.float32) for shape in
              ((batch * t, size["n_embd"]), (args["vocab_size"], size["n_embd"]), (batch * t, args["vocab_size"]))]
    on_jax = [jnp.asarray(a, jnp.dtype(dtype)) for a in arrays]
    on_torch = [torch.as_tensor(a).to(device, getattr(torch, dtype)) for a in arrays]
    gemms = lambda x, e, g: (x @ e.T, g @ e, g.T @ x)
    jax_gemms = jax.jit(gemms)
    jax_s = timed(lambda: jax.block_until_ready(jax_gemms(*on_jax)), FLAGS.warmup, FLAGS.repeats)
    torch_s = timed(lambda: (gemms(*on_torch), sync()), 1, FLAGS.repeats)
    (m, k), n = arrays[0].shape, arrays[1].shape[0]
    gflop = 3 * 2 * m * k * n / 1e9
    emit({"bench": "vs-torch", "what": "head_gemms", **shapes, "gemm": [m, k, n],
          "jax_ms": jax_s * 1e3, "torch_ms": torch_s * 1e3, "speedup": torch_s / jax_s,
          "jax_gflop_per_s": gflop / jax_s, "torch_gflop_per_s": gflop / torch_s})

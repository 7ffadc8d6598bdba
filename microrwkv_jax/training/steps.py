"""Pure step functions (loss, train step, eval step) and their jit-compiled, sharded form.

The steps are jitted with shardings over a device mesh (`microrwkv_jax.sharding`): the batch
split over data x fsdp, parameters and optimizer state replicated, split by FSDP and/or by
tensor parallelism; XLA inserts the collectives (jit + sharding, JAX's replacement for pmap).
`ShardedSteps` is what the trainer and `bench.py train` both run.
"""

from __future__ import annotations

from typing import Mapping, Optional

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from microrwkv_jax import sharding
from microrwkv_jax.checkpoints import ParamCodec
from microrwkv_jax.layers.output_head import tied_cross_entropy
from microrwkv_jax.training.optimizer import make_optimizer


def loss_budget(platform: str) -> int:
    """The fused head loss's default logits alive at a time on `platform` (see `loss_chunk_len`)."""
    return 2 ** 23 if platform == "cpu" else 2 ** 28


def loss_chunk_len(local_rows: int, seq_len: int, vocab_size: int, budget: Optional[int] = None) -> int:
    """Positions per chunk of the fused head loss: about `budget` logits alive at a time (default
    2^23, 32 MB of float32, on CPU where staying near the caches pays; 2^28 on GPUs), with the
    sequence cut into equal chunks so that padding the last one wastes less than one position
    per chunk (1024 positions in chunks of at most 333 -> 4 chunks of 256, not 4 of 333)."""
    if budget is None:
        budget = loss_budget(jax.default_backend())
    longest = max(1, budget // (local_rows * vocab_size))
    num_chunks = -(-seq_len // longest)
    return -(-seq_len // num_chunks)


def make_loss_fn(codec: ParamCodec, aux_weight: float, data_shards: int = 1,
                 loss_chunk_elements: Optional[int] = None):
    """(params, batch [B, T+1]) -> (cross-entropy + aux_weight * MoE aux loss, (cross-entropy, aux loss)).

    The head's cross-entropy is the fused, chunked `tied_cross_entropy`. `data_shards` is the size
    of the mesh's data axis: the loss keeps one embedding-gradient accumulator per shard, so that
    XLA sums them across devices once, after its chunk loop, instead of once per chunk."""
    def loss_fn(params, batch):
        model = codec.model(params)
        x, _, aux = model.features(batch[:, :-1])
        rows, t = batch.shape[0] // data_shards, batch.shape[1] - 1
        chunk = loss_chunk_len(rows, t, model.config.vocab_size, loss_chunk_elements)
        with jax.named_scope("head"):
            ce = tied_cross_entropy(x, model.output_embedding(), batch[:, 1:], model.config.vocab_size, chunk,
                                    data_shards)
        return ce + aux_weight * aux["moe_aux_loss"], (ce, aux["moe_aux_loss"])
    return loss_fn


def make_train_step(codec: ParamCodec, optimizer, grad_accum_steps: int, aux_weight: float,
                    data_shards: int = 1, loss_chunk_elements: Optional[int] = None):
    """(params, opt_state, batch [B, T+1], learning_rate) -> (params, opt_state, metrics); jit it
    with shardings. `learning_rate` scales the optimizer's update (the trainer's optimizer has a
    unit rate, `make_optimizer`; the default 1 leaves another optimizer's own rate). The loss is
    `make_loss_fn`'s; gradients are averaged over `grad_accum_steps` micro-batches.
    metrics: loss, ce, moe_aux, grad_norm, and params_finite (every updated parameter is finite)."""
    loss_fn = make_loss_fn(codec, aux_weight, data_shards, loss_chunk_elements)
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def step(params, opt_state, batch, learning_rate=1.0):
        micro = batch.reshape(grad_accum_steps, -1, batch.shape[-1])

        def accumulate(acc, mb):
            (loss, (ce, aux)), grads = grad_fn(params, mb)
            return jax.tree.map(jnp.add, acc, (grads, loss, ce, aux)), None

        zeros = (jax.tree.map(jnp.zeros_like, params), 0.0, 0.0, 0.0)
        (grads, loss, ce, aux), _ = jax.lax.scan(accumulate, zeros, micro)
        grads, loss, ce, aux = jax.tree.map(lambda g: g / grad_accum_steps, (grads, loss, ce, aux))
        with jax.named_scope("optimizer"):
            updates, opt_state = optimizer.update(grads, opt_state, params)
            updates = jax.tree.map(lambda u: learning_rate * u, updates)
            params = optax.apply_updates(params, updates)
        grad_norm = optax.global_norm(grads)
        # A finite loss is not enough: a NaN gradient or an overflowing update poisons the parameters.
        params_finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(p)) for p in jax.tree.leaves(params)]))
        return params, opt_state, {"loss": loss, "ce": ce, "moe_aux": aux, "grad_norm": grad_norm,
                                   "params_finite": params_finite}

    return step


def masked_nll(logits, targets) -> tuple:
    """(sum of the cross-entropies of the scored targets, their number); targets -1 are not scored."""
    mask = targets >= 0
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.where(mask, targets, 0))
    return jnp.sum(losses * mask), jnp.sum(mask)


def make_eval_step(codec: ParamCodec):
    def eval_step(params, inputs, targets):
        """Sum of token losses and number of scored tokens (padding targets are -1)."""
        logits, _, _ = codec.model(params).forward(inputs)
        return masked_nll(logits, targets)
    return eval_step


def make_piece_score(codec: ParamCodec):
    def score_piece(params, state, inputs, targets):
        """(sum of token losses, scored tokens, new state) of one piece of a text, read from `state`."""
        logits, state, _ = codec.model(params).forward(inputs, state)
        return (*masked_nll(logits, targets), state)
    return score_piece


class ShardedSteps:
    """The train and eval steps of `cfg`, jit-compiled over a ("data", "fsdp", "tensor") mesh
    (`microrwkv_jax.sharding`): the batch split over data x fsdp, each parameter and its
    optimizer state placed as its family's `param_axes` and the mesh say.

    train_step(params, opt_state, batch [B, T+1], learning_rate) -> (params, opt_state, metrics),
    donating the first two; eval_step(params, inputs, targets) -> (loss sum, scored tokens).
    `mesh` defaults to the config's `mesh` section over all devices; a mesh of a TPU topology's
    devices compiles for that TPU without one (`bench.py train --compile_only`)."""

    def __init__(self, codec: ParamCodec, cfg, param_axes: Mapping[str, tuple], mesh: Optional[Mesh] = None):
        self.mesh = mesh if mesh is not None else sharding.make_mesh(cfg.get("mesh"))
        self.shapes = codec.shapes
        self.replicated = NamedSharding(self.mesh, P())
        self.batch_sharding = sharding.batch_sharding(self.mesh)
        self.param_shardings = sharding.param_shardings(codec.shapes, param_axes, self.mesh)
        self.optimizer = make_optimizer(cfg, codec.linear_maps)
        abstract_params = {name: jax.ShapeDtypeStruct(shape, jnp.float32) for name, shape in codec.shapes.items()}
        self.opt_shardings = sharding.state_shardings(jax.eval_shape(self.optimizer.init, abstract_params),
                                                      self.param_shardings, self.mesh)
        platform = self.mesh.devices.flat[0].platform
        budget = cfg.get("loss_chunk_elements") or loss_budget(platform)
        step = make_train_step(codec, self.optimizer, cfg.grad_accum_steps, cfg.moe_aux_weight,
                               data_shards=sharding.batch_shards(self.mesh), loss_chunk_elements=budget)
        self.train_step = jax.jit(step, in_shardings=(self.param_shardings, self.opt_shardings, self.batch_sharding,
                                                      self.replicated),
                                  out_shardings=(self.param_shardings, self.opt_shardings, self.replicated),
                                  donate_argnums=(0, 1))
        self.eval_step = jax.jit(make_eval_step(codec),
                                 in_shardings=(self.param_shardings, self.batch_sharding, self.batch_sharding))
        self.score_piece = jax.jit(make_piece_score(codec))     # batch 1, state carried (`scoring`)

    def compile(self, params, opt_state, batch_shape) -> "jax.stages.Compiled":
        """The train step compiled ahead of time for these arguments (arrays or ShapeDtypeStructs)."""
        batch = jax.ShapeDtypeStruct(batch_shape, jnp.int32, sharding=self.batch_sharding)
        learning_rate = jax.ShapeDtypeStruct((), jnp.float32, sharding=self.replicated)
        return self.train_step.lower(params, opt_state, batch, learning_rate).compile()

    def abstract(self, with_optimizer: bool = True):
        """(params, opt_state) as ShapeDtypeStructs with their shardings: what `compile` needs,
        without any memory (`bench.py train --compile_only`)."""
        params = sharding.with_shardings(
            {name: jax.ShapeDtypeStruct(shape, jnp.float32) for name, shape in self.shapes.items()},
            self.param_shardings)
        if not with_optimizer:
            return params, None
        return params, sharding.with_shardings(jax.eval_shape(self.optimizer.init, params), self.opt_shardings)

    def init(self, flat_params: dict, with_optimizer: bool = True):
        """(params, opt_state) on the mesh, from flat parameters (host or device arrays); opt_state
        is None without the optimizer. Each array is placed as its sharding says: no device holds
        more than its shards."""
        params = {name: jax.device_put(value, self.param_shardings[name]) for name, value in flat_params.items()}
        if not with_optimizer:
            return params, None
        return params, jax.jit(self.optimizer.init, out_shardings=self.opt_shardings)(params)

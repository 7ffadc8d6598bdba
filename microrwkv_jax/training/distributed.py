"""Several processes (hosts), each with its own devices: `jax.distributed` and who reads which rows."""

from __future__ import annotations

import os

import jax


def initialize_distributed(cfg) -> None:
    """jax.distributed from config keys or the environment (coordinator, process count and id)."""
    d = cfg.get("distributed") or {}
    address = d.get("coordinator_address") or os.environ.get("JAX_COORDINATOR_ADDRESS")
    if not address:
        return
    num = d.get("num_processes") or int(os.environ["JAX_NUM_PROCESSES"])
    pid = d.get("process_id")
    pid = int(os.environ["JAX_PROCESS_ID"]) if pid is None else pid
    jax.config.update("jax_cpu_collectives_implementation", "gloo")   # CPU processes talk over gloo
    jax.distributed.initialize(coordinator_address=address, num_processes=num, process_id=pid)


def process_rows(global_batch: int) -> slice:
    """This process's rows of a global batch (processes own equal, consecutive blocks of rows)."""
    per_process = global_batch // jax.process_count()
    return slice(jax.process_index() * per_process, (jax.process_index() + 1) * per_process)

"""Checkpoints on disk: parameter names, model directories, a run's checkpoint manager."""

import numpy as np
import orbax.checkpoint as ocp

from microrwkv_jax.checkpoints import run_checkpoint_manager


def test_checkpoint_manager_keeps_the_last_k_and_the_best(tmp_path):
    manager = run_checkpoint_manager(tmp_path, keep=2)
    for step, val in zip(range(1, 7), [5.0, 1.0, 4.0, 3.0, 6.0, 7.0]):
        manager.save(step, args=ocp.args.Composite(params=ocp.args.StandardSave({"w": np.full(3, step, np.float32)}),
                                                   opt_state=ocp.args.StandardSave({"m": np.zeros(1)}),
                                                   meta=ocp.args.JsonSave({"step": step})),
                     metrics={"val_loss": val})
        manager.wait_until_finished()
    manager.close()
    assert sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()) == [2, 5, 6]

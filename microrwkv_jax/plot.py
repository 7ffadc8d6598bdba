"""Draw a run's loss curves with the corpus's entropy floor.

    python -m microrwkv_jax.plot out [more run dirs ...] [--output out/loss.png]
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys


def read_records(path) -> list:
    """The records of a run's metrics.jsonl ([] if there is none); a line that is not JSON (a run
    killed mid-write) is skipped."""
    path = pathlib.Path(path)
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records


def read_metrics(run_dir) -> tuple:
    path = pathlib.Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (is {run_dir} a training run directory?)")
    records = read_records(path)
    train = [r for r in records if "loss" in r and "step" in r]
    val = [r for r in records if "val_loss" in r and "step" in r and "event" not in r]     # the periodic ones
    return train, val


def plot_runs(run_dirs, output) -> pathlib.Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    floor = None
    for run_dir in run_dirs:
        train, val = read_metrics(run_dir)
        name = pathlib.Path(run_dir).name
        if train:
            ax.plot([r["step"] for r in train], [r["ce"] for r in train], alpha=0.6, label=f"{name} train")
        if val:
            ax.plot([r["step"] for r in val], [r["val_loss"] for r in val], marker="o", label=f"{name} validation")
            floor = next((r["entropy_floor"] for r in val if r.get("entropy_floor")), floor)
    if floor is not None:
        ax.axhline(floor, color="black", linestyle="--", label=f"entropy floor {floor:.4f}")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.legend()
    ax.grid(True, which="both", alpha=0.3)
    output = pathlib.Path(output)
    fig.tight_layout()
    fig.savefig(output, dpi=120)
    return output


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m microrwkv_jax.plot", description=__doc__.split("\n\n")[0])
    p.add_argument("run_dirs", nargs="+")
    p.add_argument("--output", help="PNG path (default: RUN_DIR/loss.png of the first run)")
    args = p.parse_args(argv)
    try:
        out = plot_runs(args.run_dirs, args.output or pathlib.Path(args.run_dirs[0]) / "loss.png")
    except (OSError, ValueError) as err:
        print(f"plot: error: {err}", file=sys.stderr)
        return 1
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

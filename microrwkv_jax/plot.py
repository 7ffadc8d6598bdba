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
    """(training records, periodic validation records, the newest "run" record or {}) of a run."""
    path = pathlib.Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (is {run_dir} a training run directory?)")
    records = read_records(path)
    train = [r for r in records if "loss" in r and "step" in r]
    val = [r for r in records if "val_loss" in r and "step" in r and "event" not in r]     # the periodic ones
    runs = [r for r in records if r.get("event") == "run"]
    return train, val, runs[-1] if runs else {}


def run_title(name: str, run: dict) -> str:
    """"out: configs/tiny.py, causal [...] 4 x 128 (1.79M parameters), stories / byte, batch 8 x 384"."""
    if not run:
        return name
    config = f"{run['config_file']}, " if run.get("config_file") else ""
    return (f"{name}: {config}{run['model']} {run['n_layer']} x {run['n_embd']} ({run['parameters'] / 1e6:.2f}M "
            f"parameters)\n{run['dataset']} / {run['tokenizer']}, batch {run['batch_size']} x {run['block_size']}, "
            f"{run['num_train_steps']} steps")


def plot_runs(run_dirs, output) -> pathlib.Path:
    """Training and validation loss of each run on a log axis with readable ticks, the entropy
    floor of the documents the periodic evaluations score (labelled with that set), and the
    valid-story rate on a second axis where the runs measured one."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator

    fig, ax = plt.subplots(figsize=(9, 5.5))
    rate_ax, floor, titles, lows, highs = None, None, [], [], []
    for run_dir in run_dirs:
        train, val, run = read_metrics(run_dir)
        name = pathlib.Path(run_dir).absolute().name
        titles.append(run_title(name, run))
        if train:
            ax.plot([r["step"] for r in train], [r["ce"] for r in train], alpha=0.6, label=f"{name} train")
            highs.append(train[0]["ce"])
            lows.append(min(r["ce"] for r in train))
        if val:
            ax.plot([r["step"] for r in val], [r["val_loss"] for r in val], marker="o",
                    label=f"{name} validation (eval set)")
            floor = next((r["entropy_floor"] for r in val if r.get("entropy_floor")), floor)
            highs.append(val[0]["val_loss"])
            lows.append(min(r["val_loss"] for r in val))
            rated = [r for r in val if r.get("valid_story_rate") is not None]
            if rated:
                rate_ax = rate_ax or ax.twinx()
                rate_ax.plot([r["step"] for r in rated], [100 * r["valid_story_rate"] for r in rated],
                             linestyle=":", marker="s", markersize=4, label=f"{name} valid stories (%)")
    if floor is not None:
        ax.axhline(floor, color="black", linestyle="--",
                   label=f"entropy floor of the eval set's stories {floor:.4f}")
        lows.append(floor)
    ax.set_yscale("log")
    # Ticks at 1, 2, 5 of every decade, as plain numbers, so that the values between the floor and
    # the first evaluation can be read off.
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_minor_locator(LogLocator(base=10, subs=(1.5, 3.0, 4.0, 7.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    ax.yaxis.set_minor_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    ax.tick_params(axis="y", which="minor", labelsize=7)
    if lows and highs:
        ax.set_ylim(min(lows) * 0.85, max(highs) * 1.15)
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title("\n".join(titles), fontsize=9)
    handles, labels = ax.get_legend_handles_labels()
    if rate_ax is not None:
        rate_ax.set_ylim(0, 100)
        rate_ax.set_ylabel("valid stories (%)")
        more = rate_ax.get_legend_handles_labels()
        handles, labels = handles + more[0], labels + more[1]
    ax.legend(handles, labels, fontsize=8, loc="best")
    ax.grid(True, which="both", alpha=0.3)
    output = pathlib.Path(output)
    fig.tight_layout()
    fig.savefig(output, dpi=120)
    plt.close(fig)
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

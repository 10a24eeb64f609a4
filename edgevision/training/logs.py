"""What a run shows and leaves behind: progress bars, log.csv/log.json, curves.png, TensorBoard."""

from __future__ import annotations

import csv
import io
import sys

from edgevision.io import atomic_write_text
from edgevision.jsonout import to_json


def progress(total: int, initial: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=desc, disable=not enabled, leave=True,
                dynamic_ncols=True, mininterval=1.0, file=sys.stderr)


def tensorboard(run):
    if not (run.cfg.tensorboard and run.main):
        return None
    from torch.utils.tensorboard import (
        SummaryWriter,  # checked by check_config() before any work
    )

    return SummaryWriter(str(run.out / "tensorboard"))


def write_logs(run) -> None:
    """log.csv, log.json and curves.png from the epoch history (rank 0; atomic writes)."""
    if not run.main or not run.history:
        return
    keys = list(run.history[0])
    for row in run.history[1:]:  # a resumed run of an older version may add columns
        keys += [k for k in row if k not in keys]
    buf = io.StringIO(newline="")
    w = csv.DictWriter(buf, fieldnames=keys)
    w.writeheader()
    w.writerows(run.history)
    atomic_write_text(run.out / "log.csv", buf.getvalue())
    atomic_write_text(run.out / "log.json", to_json(run.history, indent=1))
    from edgevision.training.plots import plot_curves

    plot_curves(run.history, run.out / "curves.png")

"""A training run's output folder: its metadata, and the rule for which folders it may write."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gradjax.boundary.trainable import Trainable, net_trainable
from gradjax.nets.models import Net
from gradjax.training.config import TrainConfig, check_hyper
from gradjax.training.data import Dataset
from gradjax.utils import files
from gradjax.utils.errors import invalid


def is_key(key: Any) -> bool:
    return not isinstance(key, (int, np.integer)) and hasattr(key, "dtype")


def run_description(
    model: Trainable,
    data: Dataset,
    tcfg: TrainConfig,
    *,
    seeds: int,
    key: Any,
    hyper: Mapping[str, np.ndarray],
) -> dict:
    """The JSON-ready description of a run; equal descriptions mean the same run."""
    return files.json_safe(
        {
            "kind": "train",
            "model": model.kind,
            "net": model.describe,
            "layers": list(model.layers),
            "train": vars(tcfg).copy(),
            "data": data.name,
            "seeds": seeds,
            "key": "custom" if is_key(key) else int(key),
            "hyper": {k: np.asarray(v).tolist() for k, v in hyper.items()},
        }
    )


def run_meta(
    net: Net,
    data: Dataset,
    tcfg: TrainConfig,
    *,
    seeds: int,
    key: int = 0,
    hyper: Mapping[str, Sequence[float]] | None = None,
) -> dict:
    """The metadata :func:`train` records for these arguments, before training.

    Args:
      net: a gradjax network.
      data: the data set.
      tcfg: the training configuration.
      seeds: number of seeds.
      key: the integer seed.
      hyper: the per-run hyper-parameters, if any.

    Returns:
      The dict that ``meta.json`` holds (without ``"axes"``); see :func:`check_output_dir`.
    """
    hyper_np, _ = check_hyper(hyper, tcfg)
    return run_description(net_trainable(net), data, tcfg, seeds=seeds, key=key, hyper=hyper_np)


# Files that mark a directory as holding something other than a training run.
FOREIGN_FILES = ("manifest.json", "arrays.npz", "chunks", "report.json", "report.md")
RUN_FILES = ("history.npz", "meta.json", "variables.npz")


def check_output_dir(directory: str | os.PathLike, meta: Mapping[str, Any]) -> None:
    """Refuses a directory that holds a sweep, a report or a different training run.

    A new or empty directory, or one holding this same run (equal metadata, e.g. a rerun),
    is accepted; its files are then replaced atomically.

    Args:
      directory: the output directory.
      meta: the run's metadata (see :func:`run_meta`).

    Raises:
      GradjaxInputError: naming ``out_dir`` and what it holds.
    """
    out = Path(directory)
    if not out.exists():
        return
    if not out.is_dir():
        raise invalid("out_dir", str(out), "a directory (it is a file)")
    allowed = "a new directory or one holding this same training run"
    foreign = [name for name in FOREIGN_FILES if (out / name).exists()]
    if foreign:
        raise invalid(
            "out_dir",
            str(out),
            f"{allowed}; it holds other results ({foreign[0]}) - use another directory",
        )
    if not any((out / name).exists() for name in RUN_FILES):
        return
    try:
        old = json.loads((out / "meta.json").read_text())
    except (OSError, ValueError):
        old = None
    if not isinstance(old, dict) or old.get("kind") != "train":
        raise invalid(
            "out_dir", str(out), f"{allowed}; it holds files of another run - use another directory"
        )
    new = files.json_safe(dict(meta))
    diff = sorted(k for k in set(old) | set(new) if k != "axes" and old.get(k) != new.get(k))
    if diff:
        raise invalid(
            "out_dir",
            str(out),
            f"{allowed}; it holds a different training run (differs in {', '.join(diff)}) - "
            "use another directory or delete it",
        )

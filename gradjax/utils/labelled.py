"""Results as labelled data: sweeps, training runs and reports for xarray and pandas.

Every array gradjax returns already knows what its axes are (seeds, scales, hyper-parameter
settings, steps, blocks); these functions hand those names to xarray and pandas, so a
result meets the scientific Python stack without re-labelling by hand. Writing netCDF or zarr
is then xarray's own (``ds.to_netcdf(path)``).

xarray and pandas are an optional extra: ``pip install 'gradjax[labelled]'``.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from gradjax.utils.errors import GradjaxInputError

__all__ = ["report_dataframe", "sweep_dataset", "train_dataframe", "train_dataset"]


def _require(name: str) -> Any:
    """The module ``name`` (``"xarray"`` or ``"pandas"``), or a one-line hint to install it."""
    try:
        return __import__(name)
    except ImportError:
        raise GradjaxInputError(
            f"{name} is not installed: labelled results need the optional extra "
            f"(pip install 'gradjax[labelled]')"
        ) from None


def _attrs(meta: dict[str, Any]) -> dict[str, Any]:
    """Attributes netCDF can store: numbers and strings as they are, the rest as JSON."""
    out = {}
    for key, value in meta.items():
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            out[key] = value
        else:
            out[key] = json.dumps(value, default=str)
    return out


def _in_order(lists: list[list[str]]) -> list[str]:
    """The union of name lists, each name where it first appears (execution order kept)."""
    return list(dict.fromkeys(name for names in lists for name in names))


def sweep_dataset(result: Any) -> Any:
    """A sweep as an ``xarray.Dataset``.

    Each leaf is a data variable over the sweep's axes (``seed``, ``sigma_w``, ...) and its
    own trailing axes. A trailing axis the probe names (block names) is the ``block``
    dimension, with the names as its coordinate; leaves that name different subsets of the
    blocks share it, ``nan`` where a leaf has no value. Scales held fixed (``sigma_b``) are
    scalar coordinates; the sweep's description is in ``attrs``.

    Args:
      result: a :class:`gradjax.SweepResult`.

    Returns:
      The dataset.
    """
    xr = _require("xarray")
    labels = dict(result.meta.get("labels", {}))
    blocks = _in_order([list(v) for v in labels.values()])
    variables = {}
    for name, values in result.data.items():
        values = np.asarray(values)
        extra = values.shape[len(result.axes) :]
        dims = list(result.axes)
        for i in range(len(extra)):
            dims.append("block" if i == 0 and name in labels else f"{name}_dim{i}")
        if name in labels:
            # Spread onto the shared block axis: nan where this leaf has no value.
            index = [blocks.index(b) for b in labels[name]]
            shape = (*values.shape[: len(result.axes)], len(blocks), *extra[1:])
            kind = values.dtype if np.issubdtype(values.dtype, np.floating) else np.float64
            full = np.full(shape, np.nan, dtype=kind)
            full[(slice(None),) * len(result.axes) + (index,)] = values
            values = full
        variables[name] = (dims, values)
    coords: dict[str, Any] = {k: np.asarray(v) for k, v in result.coords.items()}
    if blocks:
        coords["block"] = np.asarray(blocks, dtype=object)
    for key, value in dict(result.meta.get("fixed", {})).items():
        if key not in coords:
            coords[key] = value
    meta = {k: v for k, v in result.meta.items() if k not in ("labels", "fixed")}
    return xr.Dataset(variables, coords=coords, attrs=_attrs(meta))


# Training records: (name, where it lives in the history, its axes after (hyper, seed)).
_RUN_RECORDS = (
    ("loss", ("loss",), ("step",)),
    ("grad_norm", ("grad_norms",), ("step", "layer")),
    ("weight_norm", ("weight_norms",), ("step", "layer")),
    ("update_norm", ("update_norm",), ("step",)),
    ("learning_rate", ("learning_rate",), ("step",)),
    ("alive", ("alive",), ("step",)),
    ("first_nonfinite", ("first_nonfinite",), ()),
    ("initial_weight_norm", ("initial_weight_norms",), ("layer",)),
    ("train_loss", ("train", "loss"), ()),
    ("train_accuracy", ("train", "accuracy"), ()),
    ("test_loss", ("test", "loss"), ()),
    ("test_accuracy", ("test", "accuracy"), ()),
)


def train_dataset(result: Any) -> Any:
    """A training run as an ``xarray.Dataset`` over ``hyper``, ``seed``, ``step``, ``layer``.

    ``step`` counts optimiser steps from 0 (the loss of step ``t`` is measured before its
    update); ``layer`` holds the per-layer records' names, in execution order; each varied
    hyper-parameter is a coordinate along ``hyper``, named ``hyper_<name>``
    (``hyper_learning_rate``: the peak rate; ``learning_rate`` is the scheduled one per step).

    Args:
      result: a :class:`gradjax.TrainResult`.

    Returns:
      The dataset.
    """
    xr = _require("xarray")
    history = result.history
    variables = {}
    for name, where, axes in _RUN_RECORDS:
        value: Any = history
        for part in where:
            value = getattr(value, part)
        variables[name] = (("hyper", "seed", *axes), np.asarray(value))
    n_hyper, seeds, steps = np.shape(history.loss)
    coords: dict[str, Any] = {
        "hyper": np.arange(n_hyper),
        "seed": np.arange(seeds),
        "step": np.arange(steps),
    }
    if result.layers:
        coords["layer"] = np.asarray(result.layers, dtype=object)
    for key, value in result.hyper.items():
        coords[f"hyper_{key}"] = ("hyper", np.asarray(value))
    return xr.Dataset(variables, coords=coords, attrs=_attrs(json.loads(result.meta)))


def train_dataframe(result: Any) -> Any:
    """The per-layer training records as a long ``pandas.DataFrame``: one row per
    ``(hyper, seed, step, layer)``, with that step's loss, update norm and learning rate and
    each varied hyper-parameter as columns.

    Args:
      result: a :class:`gradjax.TrainResult`.

    Returns:
      The data frame.
    """
    _require("pandas")
    ds = train_dataset(result)
    per_step = [n for n, _, axes in _RUN_RECORDS if axes in (("step",), ("step", "layer"))]
    return ds[per_step].to_dataframe().reset_index()


def report_dataframe(report: Any) -> Any:
    """A diagnosis as a ``pandas.DataFrame`` with one row per block (or per measured layer of
    the series): its gradient norm, its region and verdict, and its Jacobian spectrum where
    measured.

    Args:
      report: a :class:`gradjax.Report`.

    Returns:
      The data frame, rows input side first.
    """
    pd = _require("pandas")
    region_of = {name: r for r in report.regions for name in r.layers}
    spectrum_of = {s.layer: s for s in report.spectra}
    rows = []
    for name, value in zip(report.series_names, report.series_values, strict=True):
        region = region_of.get(name)
        spectrum = spectrum_of.get(name)
        rows.append(
            {
                "block": name,
                "grad_norm": float(value),
                "region": region.name if region else None,
                "verdict": region.verdict if region else None,
                "sigma_max": spectrum.sigma_max if spectrum else np.nan,
                "mean_sq": spectrum.mean_sq if spectrum else np.nan,
                "sigma_min": spectrum.sigma_min if spectrum else np.nan,
            }
        )
    return pd.DataFrame(rows)

"""Plots never lose a run: gaps are marked, empty log panels are noted, saves are atomic."""

import os
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest

from gradjax.utils import plotting


def _fake_sweep(grads, mean_sq, cond):
    """The fields of a SweepResult that plot_sweep_layers reads: (seed, sigma_w, layer)."""
    arrays = {
        "gradients.weights": grads,
        "spectra.first.mean_sq": mean_sq[..., 0],
        "spectra.hidden.mean_sq": mean_sq[..., 1:],
        "spectra.first.condition": cond[..., 0],
        "spectra.hidden.condition": cond[..., 1:],
    }

    class FakeResult:
        coords = {"sigma_w": np.array([0.0, 1e12])}
        meta = {"net": {"activation": "relu", "depth": 4, "width": 8}}

        def __getitem__(self, key):
            return arrays[key]

    result = FakeResult()
    return result


def _texts(fig):
    return [t.get_text() for ax in fig.get_axes() for t in ax.texts]


def test_all_zero_and_overflowed_sweep_is_plotted_and_saved(tmp_path):
    # sigma_w = 0 gives exact zeros; relu at sigma_w = 1e12 overflows to inf/nan. Both used
    # to end the run with "Data cannot be log-scaled" after the data was written.
    shape = (2, 2, 4)
    grads = np.zeros(shape)
    grads[:, 1] = np.inf
    mean_sq = np.zeros(shape)
    mean_sq[:, 1] = np.nan
    cond = np.full(shape, np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "cannot be log-scaled" UserWarning either
        fig = plotting.plot_sweep_layers(_fake_sweep(grads, mean_sq, cond))
        paths = plotting.save_figure(fig, tmp_path / "sweep")
    assert [p.name for p in paths] == ["sweep.png", "sweep.pdf"]
    assert all(p.stat().st_size > 1000 for p in paths)
    notes = _texts(fig)
    assert sum("nothing to draw on a log scale" in n for n in notes) == 3
    assert any("infinite" in n and "<= 0" in n for n in notes)  # panel 1: zeros and infs
    assert sorted(os.listdir(tmp_path)) == ["sweep.pdf", "sweep.png"]  # no temp left


def test_band_marks_gaps_where_every_seed_is_non_finite():
    from matplotlib.figure import Figure

    ax = Figure().subplots()
    x = np.arange(5.0)
    samples = np.array([[1.0, 2.0, np.nan, 4.0, 0.0], [3.0, 4.0, np.inf, 8.0, 0.0]])
    dropped = plotting.band(ax, x, samples, color="k", positive=True)
    assert dropped == 4  # nan, inf and the two zeros
    median, marks = ax.lines
    np.testing.assert_array_equal(median.get_ydata()[[0, 1, 3]], [2.0, 3.0, 6.0])
    np.testing.assert_array_equal(marks.get_xdata(), [2.0, 4.0])  # the two empty columns


def test_log_scale_counts_the_values_it_cannot_draw():
    from matplotlib.figure import Figure

    ax = Figure().subplots()
    data = np.array([1.0, 10.0, 0.0, -1.0, np.nan, 100.0, np.inf, 5.0, 2.0, 3.0])
    ax.plot(data)
    plotting.log_scale(ax, data)
    assert ax.get_yscale() == "log"
    note = "4 of 10 values <= 0 or non-finite\nnot drawn (x: none left)"
    assert [t.get_text() for t in ax.texts] == [note]


def test_save_figure_survives_a_log_axis_without_positive_data(tmp_path):
    from matplotlib.figure import Figure

    fig = Figure()
    ax = fig.subplots()
    ax.plot([0.0, 1.0], [np.nan, np.nan])
    ax.set_yscale("log")  # as other plotting code does, before any check
    plotting.save_figure(fig, tmp_path / "empty", formats=("png",))
    assert (tmp_path / "empty.png").stat().st_size > 1000
    assert ax.get_yscale() == "linear"
    assert "no positive finite values" in ax.texts[0].get_text()


def test_save_figure_does_not_use_a_fixed_temp_name(tmp_path):
    # The old fixed temp name ".curves.png.tmp" held by another writer (here: a directory in
    # its place) made every other save of the same figure fail.
    (tmp_path / ".curves.png.tmp").mkdir()
    from matplotlib.figure import Figure

    fig = Figure()
    fig.subplots().plot([1.0, 2.0])
    plotting.save_figure(fig, tmp_path / "curves", formats=("png",))
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("writers", [2])
def test_concurrent_saves_of_one_figure_all_succeed(tmp_path, writers):
    script = textwrap.dedent(
        f"""
        from matplotlib.figure import Figure
        from gradjax.utils.plotting import save_figure
        fig = Figure()
        fig.subplots().plot([1.0, 2.0, 3.0])
        for _ in range(10):
            save_figure(fig, {str(tmp_path / "fig")!r})
        """
    )
    env = dict(os.environ, MPLBACKEND="Agg")
    procs = [
        subprocess.Popen([sys.executable, "-c", script], env=env, stderr=subprocess.PIPE)
        for _ in range(writers)
    ]
    errors = [p.communicate(timeout=300)[1].decode() for p in procs]
    assert [p.returncode for p in procs] == [0] * writers, errors
    assert sorted(os.listdir(tmp_path)) == ["fig.pdf", "fig.png"]

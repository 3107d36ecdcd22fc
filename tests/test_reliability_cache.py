"""The figures cache trusts only records it can verify; damaged ones are recomputed."""

import importlib.util
import json
import textwrap

import numpy as np
import pytest

from gradjax.paper_figs import run as figrun

FIGURE = textwrap.dedent(
    '''
    """A tiny stand-in figure: counts its computations."""
    import numpy as np

    NAME = "fake"
    TITLE = "a fake figure"
    METHODS = "none"
    CLAIMS = ()
    CALLS = []


    def config(quick):
        return {"n": 3}


    def compute(cfg, progress):
        CALLS.append(cfg)
        return {"numbers": {"x": 1.5}, "arrays": {"a": np.arange(cfg["n"], dtype=np.float64)}}


    def verdicts(cfg, numbers):
        return []


    def plot(cfg, data):
        from matplotlib.figure import Figure

        fig = Figure(figsize=(2, 2))
        fig.subplots().plot(data["arrays"]["a"])
        return fig
    '''
)


@pytest.fixture
def fake(tmp_path, monkeypatch):
    path = tmp_path / "fig_fake.py"
    path.write_text(FIGURE)
    spec = importlib.util.spec_from_file_location("fig_fake", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(figrun, "discover", lambda: {"fake": module})
    out = tmp_path / "out"
    figrun.run_figures(out, progress=False, log=lambda msg: None)
    assert len(module.CALLS) == 1
    stem = out / figrun.CACHE_DIR / f"fake-{figrun.config_hash(module, {'n': 3})}"
    return module, out, stem


def _rerun(module, out):
    numbers = figrun.run_figures(out, progress=False, log=lambda msg: None)
    return len(module.CALLS), numbers["figures"]["fake"]["numbers"]["x"]


def test_an_intact_cache_is_reused(fake):
    module, out, _ = fake
    assert _rerun(module, out) == (1, 1.5)


@pytest.mark.parametrize(
    "damage",
    [
        lambda p: p.with_suffix(".json").write_text('{"name": "fake", "hash": '),  # truncated
        lambda p: p.with_suffix(".json").write_text("[1, 2, 3]\n"),  # valid JSON, not a record
        lambda p: p.with_suffix(".json").write_bytes(b"\xff\xfe garbage"),  # not text
        lambda p: p.with_suffix(".npz").write_bytes(p.with_suffix(".npz").read_bytes()[:40]),
        lambda p: p.with_suffix(".npz").write_bytes(bytes(p.with_suffix(".npz").stat().st_size)),
        lambda p: p.with_suffix(".npz").unlink(),
    ],
    ids=["json-cut", "json-foreign", "json-garbled", "npz-cut", "npz-zeroed", "npz-gone"],
)
def test_a_damaged_cache_is_recomputed(fake, damage):
    module, out, stem = fake
    damage(stem)
    assert _rerun(module, out) == (2, 1.5)
    record = json.loads(stem.with_suffix(".json").read_text())
    with np.load(stem.with_suffix(".npz")) as arrays:
        np.testing.assert_array_equal(arrays["a"], [0.0, 1.0, 2.0])
    assert record["hash"] in stem.name
    assert _rerun(module, out) == (2, 1.5)  # and the repaired cache is trusted again

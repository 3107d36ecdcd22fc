"""The ``gradjax`` command line: real runs, and one-line errors with exit code 2."""

import json
import subprocess
import sys

import numpy as np
import pytest

from gradjax.commands.cli import main


def test_sweep_writes_results_and_figure(tmp_path, capsys):
    out = tmp_path / "sweep"
    code = main(
        [
            "sweep",
            "--depth",
            "6",
            "--width",
            "16",
            "--seeds",
            "2",
            "--sigma-w",
            "0.5:2.0:3",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["sigma_w"] == [0.5, 1.25, 2.0]
    for name in ("arrays.npz", "meta.json", "sweep.png", "sweep.pdf"):
        assert (out / name).stat().st_size > 0
    from gradjax import SweepResult

    res = SweepResult.load(out)
    grads = res["gradients.activations"]  # (seed, sigma_w, layer)
    # tanh at sigma_w = 0.5 vanishes towards the input; at 2.0 it does not.
    assert np.all(grads[:, 0, 0] < grads[:, 0, -1])
    assert np.all(grads[:, 2, 0] > grads[:, 2, -1])


@pytest.mark.parametrize(
    "args, field",
    [
        (["--activation", "sigmod"], "activation='sigmod'"),
        (["--init", "xavier"], "init='xavier'"),
        (["--sigma-w", "1:2"], "--sigma-w='1:2'"),
        (["--sigma-w=-1,2"], "--sigma-w='-1,2'"),
        (["--sigma-b", "nan"], "--sigma-b='nan'"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, args, field):
    code = main(["sweep", "--depth", "2", "--width", "4", "--out", str(tmp_path / "o"), *args])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert field in err and "expected" in err and "\n" not in err and "Traceback" not in err


def test_unwritable_out_fails_before_work(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code = main(["sweep", "--out", str(blocker / "sub")])
    assert code == 2
    assert "--out=" in capsys.readouterr().err


def test_console_script_depth_zero_is_an_argparse_error():
    proc = subprocess.run(
        [sys.executable, "-m", "gradjax.commands.cli", "sweep", "--depth", "0", "--out", "x"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "--depth" in proc.stderr and "Traceback" not in proc.stderr

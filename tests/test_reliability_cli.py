"""Every verb refuses bad input the same way: exit 2, one line naming the flag, nothing written."""

import os

import pytest

from gradjax.commands.cli import main

OUT = "out"  # relative: the test runs in an empty directory and checks it stays empty

CASES = {
    "diagnose-seed-overflow": (["diagnose", "--seed", "99999999999999999999"], "--seed="),
    "diagnose-seed-negative": (["diagnose", "--seed=-1"], "--seed='-1'"),
    "diagnose-activation": (["diagnose", "--activation", "sigmod"], "--activation='sigmod'"),
    "diagnose-sigma-w-nan": (["diagnose", "--sigma-w", "nan"], "--sigma-w='nan'"),
    "diagnose-example-with-mlp-flag": (
        ["diagnose", "--example", "cnn_digits", "--depth", "3"],
        "--depth=3",
    ),
    "sweep-devices": (["sweep", "--devices", "5"], "--devices=5"),
    "sweep-sigma-w-negative": (["sweep", "--sigma-w=-1,1"], "--sigma-w='-1,1'"),
    "sweep-sigma-w-huge-grid": (["sweep", "--sigma-w", "0:1:100000000"], "--sigma-w="),
    "sweep-seeds-float": (["sweep", "--seeds", "2.0"], "--seeds='2.0'"),
    "sweep-depth-overflow": (["sweep", "--depth", str(2**64)], "--depth="),
    "sweep-budget-zero": (["sweep", "--memory-budget-mb", "0"], "--memory-budget-mb='0'"),
    "bench-package-empty": (["bench", "--package", ""], "--package=''"),
    "bench-package-dots": (["bench", "--package", ".."], "--package='..'"),
    "bench-package-without-benchmarks": (["bench", "--package", "json"], "--package='json'"),
    "theory-sigma-b2-negative": (["theory", "--sigma-b2=-1"], "--sigma-b2='-1'"),
}


@pytest.fixture
def empty_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _refused(capsys, argv, flag):
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert "\n" not in err and "Traceback" not in err, err
    assert flag in err and " is invalid: expected " in err, err


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_flag_is_refused_before_anything_is_written(empty_cwd, capsys, name):
    argv, flag = CASES[name]
    if argv[0] != "theory":
        argv = [*argv, "--out", OUT]
    _refused(capsys, argv, flag)
    assert os.listdir(empty_cwd) == []  # no output directory, not even an empty one


@pytest.mark.parametrize("verb", ["sweep", "train", "diagnose", "figures", "bench"])
def test_empty_out_is_refused_and_the_current_directory_untouched(empty_cwd, capsys, verb):
    _refused(capsys, [verb, "--out", ""], "--out=''")
    assert os.listdir(empty_cwd) == []


def test_a_sweep_of_zeros_and_overflow_keeps_its_data_plot_and_summary(tmp_path, capsys):
    # sigma_w = 0 gives gradients of exactly 0 and relu at sigma_w = 50, depth 32 overflows
    # float32: neither may be lost to a log-scale crash, and the summary must be standard JSON.
    import json

    out = tmp_path / "s"
    argv = ["sweep", "--activation", "relu", "--init", "gaussian", "--depth", "32"]
    argv += ["--width", "8", "--seeds", "2", "--batch", "2", "--sigma-w", "0,50"]
    code = main([*argv, "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err[-2000:]

    def refuse_constant(name):
        raise AssertionError(f"bare {name} in the JSON summary")

    summary = json.loads(captured.out, parse_constant=refuse_constant)
    assert summary["sigma_w"] == [0.0, 50.0]
    assert summary["first_layer_grad_median"][0] == 0.0  # sigma_w = 0: no gradient reaches W_1
    for name in ("arrays.npz", "sweep.png", "sweep.pdf"):
        assert (out / name).stat().st_size > 0


def test_train_into_a_path_under_a_file_is_one_line(empty_cwd, capsys):
    # The output check comes before the run's size estimate is printed.
    (empty_cwd / "file").write_text("x")
    _refused(capsys, ["train", "--steps", "2", "--out", "file/sub"], "--out='file/sub'")


def test_python_dash_m_gradjax_is_the_command_line():
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "gradjax", "theory", "--help"], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: gradjax theory")


@pytest.mark.parametrize(
    ("argv", "users_file"),
    [
        (["figures", "--quick", "--only", "activations"], "REPORT.md"),
        (["diagnose", "--depth", "3", "--width", "8"], "report.txt"),
        (["train", "--depth", "2", "--width", "8", "--seeds", "1", "--steps", "2"], "curves.png"),
    ],
)
def test_a_user_s_files_are_never_overwritten(empty_cwd, capsys, argv, users_file):
    out = empty_cwd / "mine"
    out.mkdir()
    (out / users_file).write_text("my own notes")
    assert main([*argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and users_file in err[0] and "--overwrite" in err[0]
    assert (out / users_file).read_text() == "my own notes"
    assert sorted(p.name for p in out.iterdir()) == [users_file]  # nothing else written


def test_a_verb_reuses_its_own_directory_and_refuses_another_verb_s(empty_cwd, capsys):
    out = empty_cwd / "run"
    diagnose = ["diagnose", "--depth", "3", "--width", "8", "--batch", "8", "--out", str(out)]
    assert main(diagnose) == 0
    assert main(diagnose) == 0  # its own directory: rerun in place
    capsys.readouterr()
    train = ["train", "--depth", "2", "--width", "8", "--seeds", "1", "--steps", "2"]
    before = (out / "report.json").read_bytes()
    assert main([*train, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "report.json" in err  # another verb's results, named
    assert (out / "report.json").read_bytes() == before


@pytest.mark.parametrize("platform", ["cuda", "bogus"])
def test_a_backend_the_machine_cannot_start_is_one_line(tmp_path, platform):
    import subprocess
    import sys

    env = {**os.environ, "JAX_PLATFORMS": platform}
    done = subprocess.run(
        [sys.executable, "-m", "gradjax.commands.cli", "theory", "--activation", "tanh"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    err = done.stderr.strip()
    assert done.returncode == 2 and "\n" not in err and "Traceback" not in err, err
    assert f"JAX_PLATFORMS='{platform}' is invalid" in err
    assert os.listdir(tmp_path) == []


def test_an_output_path_the_filesystem_cannot_hold_is_refused_before_any_work(empty_cwd, capsys):
    deep = "/".join(["d" * 200] * 20)  # 4,019 characters: its files would pass PATH_MAX
    _refused(capsys, ["train", "--steps", "5", "--out", deep], "--out=")
    assert os.listdir(empty_cwd) == []


def test_an_unknown_matplotlib_backend_is_refused_before_any_work(empty_cwd, capsys, monkeypatch):
    monkeypatch.setenv("MPLBACKEND", "no_such_backend")
    code = main(["figures", "--quick", "--only", "activations", "--out", OUT])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "MPLBACKEND='no_such_backend' is invalid" in err
    assert os.listdir(empty_cwd) == []


def test_a_full_disk_is_one_line_and_an_unused_new_directory_is_removed(
    empty_cwd, capsys, monkeypatch
):
    import errno

    from gradjax.utils import files

    def full(path, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(files, "atomic_write", full)
    code = main(["diagnose", "--depth", "3", "--width", "8", "--batch", "4", "--out", OUT])
    err = capsys.readouterr().err.strip()
    assert code == 1 and "\n" not in err and "Traceback" not in err, err
    assert "No space left on device" in err and "rerun the same command" in err
    # The directory this run created holds nothing it finished: it is not left behind.
    assert os.listdir(empty_cwd) == []


def test_a_folder_where_a_verb_writes_a_file_is_refused_before_any_work(empty_cwd, capsys):
    (empty_cwd / OUT / "report.txt").mkdir(parents=True)
    code = main(["diagnose", "--depth", "3", "--width", "8", "--batch", "4", "--out", OUT])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "report.txt is a folder" in err, err
    assert sorted(os.listdir(empty_cwd / OUT)) == ["report.txt"]

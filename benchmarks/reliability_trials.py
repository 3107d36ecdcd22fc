"""The trial families of ``bench reliability`` beyond bad flags: what a hostile user does.

Each case runs ``python -m gradjax.commands.cli VERB ...`` in a subprocess, as a user would,
and is judged on what it leaves behind, not on its wording:

* ``foreign_files``: every verb pointed at a directory holding a user's file with a name it
  writes: refused in one line, the file unchanged;
* ``damaged_dirs``: a finished directory with a file where a folder belongs, a folder where a
  file belongs, or edited numbers: refused in one line or rebuilt to the same result;
* ``environment``: missing or unknown JAX backends, an unknown matplotlib backend, output
  paths longer than the filesystem holds: refused in one line, nothing written;
* ``degenerate_inputs``: a ``--model`` factory whose labels are out of range, whose batch is
  empty, whose model returns a tuple or raises, or that exits or prints: refused in one line
  (exit 2) or, where the input is valid, a result whose JSON on stdout parses;
* ``interrupts``: Ctrl-C (once, twice) or SIGTERM while a run compiles: exit 130 (143) with
  no traceback and no crash; a rerun finishes with the uninterrupted run's arrays;
* ``swapped_chunks``: chunk files of a finished sweep exchanged or copied onto each other's
  names: the rerun gives the uninterrupted run's arrays;
* ``concurrent_verbs``: a second verb started on a directory a first one is writing: one of
  them refused, the other's result intact;
* ``full_disk``: writes capped by ``RLIMIT_FSIZE`` (a file larger than a few KiB cannot be
  written: the same ``OSError`` path as a full disk): one line, exit 1, no traceback; then a
  rerun without the cap finishes with the uninterrupted run's result.

A case's outcome is one of ``ok``, ``tracebacks``, ``crashes`` (killed by a signal, or exit
>= 128 other than 130/143 after an interrupt), ``differing_results``, ``overwritten_or_lost``
(a user's file changed or a finished result gone) or ``other`` (e.g. not refused, several
lines).
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

OUTCOMES = ("ok", "tracebacks", "crashes", "differing_results", "overwritten_or_lost", "other")

# Factories of degenerate models (module text written next to the cases).
FACTORIES = """
import sys
import jax, jax.numpy as jnp
from flax import linen as nn

def _mlp(out=3):
    return nn.Sequential([nn.Dense(8), nn.tanh, nn.Dense(8), nn.tanh, nn.Dense(out)])

def _batch(n=8, classes=3, labels=None):
    x = jax.random.normal(jax.random.key(0), (n, 4))
    y = jnp.arange(n) % classes if labels is None else labels
    return x, y

def _made(model, batch):
    return model, model.init(jax.random.key(1), batch[0][:1]), batch

def labels_out_of_range():
    return _made(_mlp(), _batch(labels=jnp.arange(8) + 5))

def negative_labels():
    return _made(_mlp(), _batch(labels=-jnp.ones(8, jnp.int32)))

def empty_batch():
    model = _mlp()
    x = jnp.zeros((0, 4))
    return model, model.init(jax.random.key(1), jnp.zeros((1, 4))), (x, jnp.zeros((0,), jnp.int32))

class Pair(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = nn.Dense(3)(x)
        return h, h

def returns_tuple():
    return _made(Pair(), _batch())

class Raises(nn.Module):
    @nn.compact
    def __call__(self, x):
        raise RuntimeError("a bug in the user's model")

def model_raises():
    model = Raises()
    return model, {"params": {}}, _batch()

def exits_0():
    sys.exit(0)

def exits_3():
    sys.exit(3)

def prints():
    print("hello from the factory")
    return _made(_mlp(), _batch())

class Rounded(nn.Module):
    @nn.compact
    def __call__(self, x):
        return jnp.round(nn.Dense(3)(nn.tanh(nn.Dense(8)(x))) * 0.0)

def zero_gradient():
    return _made(Rounded(), _batch())

class Norm(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = nn.Dense(8)(x)
        h = nn.BatchNorm(use_running_average=False)(h)
        h = nn.Dense(8)(nn.tanh(h))
        h = nn.BatchNorm(use_running_average=False)(h)
        return nn.Dense(3)(nn.tanh(h))

def nan_params():
    model, variables, batch = _made(_mlp(), _batch())
    variables = jax.tree.map(lambda v: v.at[(0,) * v.ndim].set(jnp.nan), variables)
    return model, variables, batch

def batchnorm_batch_1():
    model = Norm()
    x, y = _batch(n=1)
    return model, model.init(jax.random.key(1), x), (x, y)
"""
DEGENERATE = (
    "labels_out_of_range", "negative_labels", "empty_batch", "returns_tuple", "model_raises",
    "exits_0", "exits_3", "prints", "zero_gradient", "nan_params", "batchnorm_batch_1",
)  # fmt: skip

SWEEP_SMALL = ["--depth", "4", "--width", "8", "--seeds", "4", "--batch", "4"]
TRAIN_SMALL = ["--depth", "2", "--width", "8", "--seeds", "2", "--steps", "20", "--no-progress"]
DIAGNOSE_SMALL = ["--depth", "4", "--width", "8", "--batch", "8"]
FIGURE = ["--quick", "--only", "activations"]


def env(**extra: str) -> dict[str, str]:
    out = dict(os.environ)
    out.setdefault("MPLBACKEND", "Agg")
    out["PYTHONUNBUFFERED"] = "1"
    out.update(extra)
    return out


def cli(verb: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "gradjax.commands.cli", verb, *args]


def run(argv: list[str], *, cwd: Path, timeout_s: float, **kw: Any) -> subprocess.CompletedProcess:
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout_s, **kw)


def judged(
    done: subprocess.CompletedProcess, *, refused: bool | None = True, codes: tuple = (2,)
) -> str:
    """``ok`` when the process neither crashed nor printed a traceback and, with
    ``refused``, gave exactly one line with an exit status in ``codes`` (2: bad input; 1: a
    filesystem problem); ``None``: refused or succeeded. Anything else carries the last
    line of its standard error."""
    last = (done.stderr.strip().splitlines() or [""])[-1][-160:]
    if "Traceback (most recent call last)" in done.stderr:
        return f"tracebacks: {last}"
    if done.returncode < 0 or done.returncode >= 128:
        return f"crashes: exit {done.returncode}: {last}"
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    clean_refusal = done.returncode in codes and len(lines) == 1
    if refused is True:
        return "ok" if clean_refusal else f"other: exit {done.returncode}: {last}"
    if refused is None and (clean_refusal or done.returncode == 0):
        return "ok"
    return "ok" if done.returncode == 0 else f"other: exit {done.returncode}: {last}"


def snapshot(directory: Path) -> dict[str, bytes]:
    """Every regular file under ``directory`` and its bytes."""
    return {
        str(p.relative_to(directory)): p.read_bytes()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def arrays(out: Path) -> dict[str, bytes] | None:
    try:
        with np.load(out / "arrays.npz", allow_pickle=False) as npz:
            return {k: npz[k].tobytes() + str(npz[k].dtype).encode() for k in npz.files}
    except Exception:
        return None


# ---------------------------------------------------------------------------- families


def foreign_files(root: Path, timeout_s: float) -> list[Callable[[], str]]:
    """A user's file with a name the verb writes, in the output directory."""
    names = {
        "figures": (["REPORT.md", "numbers.json", "activations.png", "activations.pdf"], FIGURE),
        "diagnose": (["report.txt", "report.json", "report.png", "report.pdf"], DIAGNOSE_SMALL),
        "train": (
            ["history.npz", "variables.npz", "meta.json", "curves.png", "curves.pdf"],
            TRAIN_SMALL,
        ),
        "sweep": (
            ["arrays.npz", "meta.json", "sweep.png", "sweep.pdf", "notes.txt", "manifest.json"],
            SWEEP_SMALL,
        ),
    }
    cases = []
    for verb, (files, flags) in names.items():
        for name in files:

            def case(verb=verb, name=name, flags=flags) -> str:
                out = root / f"foreign-{verb}-{name}"
                out.mkdir()
                (out / name).write_bytes(b"a user's own file\n")
                before = snapshot(out)
                done = run(cli(verb, *flags, "--out", str(out)), cwd=root, timeout_s=timeout_s,
                           env=env())  # fmt: skip
                if snapshot(out) != before:
                    return "overwritten_or_lost"
                return judged(done)

            cases.append(case)
    return cases


def environment(root: Path, timeout_s: float) -> list[Callable[[], str]]:
    """Unusable backends and over-long paths: one line, nothing written."""
    verbs = {
        "figures": FIGURE,
        "sweep": SWEEP_SMALL,
        "train": TRAIN_SMALL,
        "diagnose": DIAGNOSE_SMALL,
        "theory": [],
        "bench": ["no_such_benchmark"],
    }
    cases = []
    for verb, flags in verbs.items():
        for platform in ("cuda", "tpu", "rocm", "bogus"):
            cases.append(_refused_case(root, verb, flags, timeout_s, JAX_PLATFORMS=platform))
        if verb in ("figures", "sweep", "train", "diagnose"):
            cases.append(_refused_case(root, verb, flags, timeout_s, MPLBACKEND="no_such_gui"))
            for length in (4040, 4200):
                cases.append(_refused_case(root, verb, flags, timeout_s, long_out=length))
    return cases


def _refused_case(root: Path, verb: str, flags: list[str], timeout_s: float, *,
                  long_out: int = 0, **variables: str) -> Callable[[], str]:  # fmt: skip
    def case() -> str:
        cwd = root / f"env-{verb}-{'-'.join(variables.values()) or long_out}"
        cwd.mkdir()
        out = "out"
        if long_out:
            depth = (long_out - len(str(cwd))) // 200 + 1
            out = "/".join(["d" * 199] * depth)
        argv = cli(verb, *flags) + ([] if verb == "theory" else ["--out", out])
        done = run(argv, cwd=cwd, timeout_s=timeout_s, env=env(**variables))
        if list(cwd.iterdir()):
            return "other"  # something was written (or an empty directory left)
        return judged(done)

    return case


def degenerate_inputs(root: Path, timeout_s: float) -> list[Callable[[], str]]:
    """Factories of degenerate models through diagnose and sweep."""
    (root / "gj_degenerate.py").write_text(FACTORIES)
    cases = []
    for verb in ("diagnose", "sweep"):
        for name in DEGENERATE:

            def case(verb=verb, name=name) -> str:
                out = root / f"degenerate-{verb}-{name}"
                extra = ["--loss", "xent"] if verb == "diagnose" else ["--sigma-w", "0.5,1"]
                if verb == "sweep":
                    extra += ["--seeds", "2", "--loss", "xent"]
                argv = cli(verb, "--model", f"gj_degenerate:{name}", *extra, "--out", str(out))
                done = run(argv, cwd=root, timeout_s=timeout_s,
                           env=env(PYTHONPATH=str(root)))  # fmt: skip
                verdict = judged(done, refused=None)
                if verdict == "ok" and done.returncode == 0 and verb == "sweep":
                    try:
                        json.loads(done.stdout)
                    except ValueError:
                        return "other"  # the factory's print broke the JSON
                return verdict

            cases.append(case)
    return cases


def interrupts(root: Path, timeout_s: float, reference: Path | None) -> list[Callable[[], str]]:
    """Signals while a run compiles; reruns of the sweeps must give the reference arrays."""
    plans = [
        ("sweep", [signal.SIGINT], 2.0),
        ("sweep", [signal.SIGINT], 4.0),
        ("sweep", [signal.SIGINT, signal.SIGINT], 3.0),
        ("sweep", [signal.SIGTERM], 3.0),
        ("train", [signal.SIGINT], 2.5),
        ("train", [signal.SIGINT], 5.0),
        ("train", [signal.SIGINT, signal.SIGINT], 3.0),
        ("train", [signal.SIGTERM], 4.0),
        ("figures", [signal.SIGINT], 4.0),
        ("diagnose", [signal.SIGINT], 3.0),
        ("diagnose", [signal.SIGTERM], 3.0),
    ]
    flags = {"sweep": SWEEP_ARGS, "train": TRAIN_SMALL, "figures": FIGURE,
             "diagnose": DIAGNOSE_SMALL}  # fmt: skip
    cases = []
    for i, (verb, signals, delay) in enumerate(plans):

        def case(i=i, verb=verb, signals=signals, delay=delay) -> str:
            out = root / f"interrupt{i}-{verb}"
            with open(root / f"interrupt{i}.err", "w") as err:
                proc = subprocess.Popen(
                    cli(verb, *flags[verb], "--out", str(out)), cwd=root, env=env(),
                    stdout=subprocess.DEVNULL, stderr=err,
                )  # fmt: skip
                time.sleep(delay)
                for sig in signals:
                    if proc.poll() is None:
                        proc.send_signal(sig)
                    time.sleep(0.1)
                code = proc.wait(timeout=timeout_s)
            text = (root / f"interrupt{i}.err").read_text()
            if "Traceback (most recent call last)" in text:
                return "tracebacks"
            wanted = 143 if signals[0] == signal.SIGTERM else 130
            if code not in (0, wanted):  # 0: it finished before the signal
                return "crashes" if code < 0 or code >= 128 else "other"
            if verb == "sweep" and reference is not None:
                rerun = run(cli(verb, *flags[verb], "--out", str(out)), cwd=root,
                            timeout_s=timeout_s, env=env())  # fmt: skip
                if rerun.returncode != 0:
                    return judged(rerun, refused=False)
                return "ok" if arrays(out) == arrays(reference) else "differing_results"
            return "ok"

        cases.append(case)
    return cases


SWEEP_ARGS = [*SWEEP_SMALL, "--sigma-w", "0.5,1,1.5,2", "--memory-budget-mb", "0.05"]


def swapped_chunks(root: Path, timeout_s: float, reference: Path) -> list[Callable[[], str]]:
    """Chunk files exchanged or copied onto each other's names, then a rerun."""

    def swap(i: int, j: int) -> Callable[[list[Path]], None]:
        def damage(chunks: list[Path]) -> None:
            a, b = chunks[i % len(chunks)], chunks[j % len(chunks)]
            tmp = a.with_suffix(".swap")
            a.rename(tmp)
            b.rename(a)
            tmp.rename(b)

        return damage

    def copy(i: int, j: int) -> Callable[[list[Path]], None]:
        return lambda chunks: shutil.copyfile(chunks[i % len(chunks)], chunks[j % len(chunks)])

    damages = {"swap01": swap(0, 1), "swap0last": swap(0, -1), "swap12": swap(1, 2),
               "copy0to3": copy(0, 3), "copy1to0": copy(1, 0)}  # fmt: skip
    cases = []
    for name, damage in damages.items():

        def case(name=name, damage=damage) -> str:
            out = root / f"swapped-{name}"
            shutil.copytree(reference, out)
            damage(sorted((out / "chunks").glob("*.npz")))
            (out / "arrays.npz").unlink()
            done = run(cli("sweep", *SWEEP_ARGS, "--out", str(out)), cwd=root,
                       timeout_s=timeout_s, env=env())  # fmt: skip
            if done.returncode != 0:
                return judged(done, refused=False)
            return "ok" if arrays(out) == arrays(reference) else "differing_results"

        cases.append(case)
    return cases


def damaged_dirs(root: Path, timeout_s: float, reference: Path) -> list[Callable[[], str]]:
    """A finished sweep directory with entries of the wrong kind, then a rerun."""

    def make_dir(name: str) -> Callable[[Path], None]:
        def damage(out: Path) -> None:
            target = out / name
            if target.is_dir():
                shutil.rmtree(target)
            else:
                target.unlink(missing_ok=True)
            target.mkdir()
            (target / "x").write_text("x")

        return damage

    def make_file(name: str) -> Callable[[Path], None]:
        def damage(out: Path) -> None:
            shutil.rmtree(out / name)
            (out / name).write_text("not a folder")

        return damage

    def chunk_dir(out: Path) -> None:
        first = sorted((out / "chunks").glob("*.npz"))[0]
        first.unlink()
        first.mkdir()

    def edited_manifest(out: Path) -> None:
        manifest = json.loads((out / "manifest.json").read_text())
        manifest["fingerprint"] = {}
        (out / "manifest.json").write_text(json.dumps(manifest))

    damages = {"lock_dir": make_dir(".lock"), "manifest_dir": make_dir("manifest.json"),
               "arrays_dir": make_dir("arrays.npz"), "chunks_file": make_file("chunks"),
               "chunk_dir": chunk_dir, "manifest_empty_fingerprint": edited_manifest}  # fmt: skip
    cases = []
    for name, damage in damages.items():

        def case(name=name, damage=damage) -> str:
            out = root / f"damaged-{name}"
            shutil.copytree(reference, out)
            damage(out)
            done = run(cli("sweep", *SWEEP_ARGS, "--out", str(out)), cwd=root,
                       timeout_s=timeout_s, env=env())  # fmt: skip
            if done.returncode == 0:
                return "ok" if arrays(out) == arrays(reference) else "differing_results"
            if not (out / "chunks").exists() and not (out / "manifest.json").exists():
                return "overwritten_or_lost"  # refused, but the finished sweep is gone
            return judged(done, codes=(1, 2))  # the folder's damage named in one line

        cases.append(case)
    return cases


def concurrent_verbs(root: Path, timeout_s: float) -> list[Callable[[], str]]:
    """A second verb on a directory a running sweep or train is writing."""
    plans = [
        ("sweep", SWEEP_ARGS, "train", TRAIN_SMALL),
        ("sweep", SWEEP_ARGS, "diagnose", DIAGNOSE_SMALL),
        ("train", TRAIN_SMALL + ["--steps", "400"], "train", TRAIN_SMALL + ["--seeds", "3"]),
        ("train", TRAIN_SMALL + ["--steps", "400"], "figures", FIGURE),
    ]
    cases = []
    for i, (first, first_flags, second, second_flags) in enumerate(plans):

        def case(i=i, first=first, ff=first_flags, second=second, sf=second_flags) -> str:
            out = root / f"concurrent-{i}"
            with open(root / f"concurrent{i}.err", "w") as err:
                proc = subprocess.Popen(
                    cli(first, *ff, "--out", str(out)), cwd=root, env=env(),
                    stdout=subprocess.DEVNULL, stderr=err,
                )  # fmt: skip
                deadline = time.monotonic() + timeout_s
                while proc.poll() is None and time.monotonic() < deadline:
                    if (out / "chunks").is_dir() or (out / "segments").is_dir():
                        break
                    time.sleep(0.05)
                done = run(cli(second, *sf, "--out", str(out)), cwd=root, timeout_s=timeout_s,
                           env=env())  # fmt: skip
                code = proc.wait(timeout=timeout_s)
            if "Traceback" in (root / f"concurrent{i}.err").read_text() or code != 0:
                return "tracebacks" if code in (0, 1, 2) else "crashes"
            kept = (out / "arrays.npz") if first == "sweep" else (out / "history.npz")
            if not kept.is_file():
                return "overwritten_or_lost"
            return judged(done)

        cases.append(case)
    return cases


def full_disk(root: Path, timeout_s: float, reference: Path) -> list[Callable[[], str]]:
    """Writes capped at a few KiB (``RLIMIT_FSIZE``): one line and exit 1, then a rerun."""

    def capped(limit: int) -> Callable[[], None]:
        def apply() -> None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write fails instead of killing
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

        return apply

    plans = [("sweep", SWEEP_ARGS, 2048), ("sweep", SWEEP_ARGS, 20000),
             ("train", TRAIN_SMALL, 4096), ("diagnose", DIAGNOSE_SMALL, 4096),
             ("figures", FIGURE, 4096)]  # fmt: skip
    cases = []
    for i, (verb, flags, limit) in enumerate(plans):

        def case(i=i, verb=verb, flags=flags, limit=limit) -> str:
            out = root / f"full{i}-{verb}"
            argv = cli(verb, *flags, "--out", str(out))
            done = run(argv, cwd=root, timeout_s=timeout_s, env=env(), preexec_fn=capped(limit))
            if "Traceback (most recent call last)" in done.stderr:
                return judged(done)
            if done.returncode not in (0, 1):
                return judged(done, codes=(1,))
            again = run(argv, cwd=root, timeout_s=timeout_s, env=env())
            if again.returncode != 0:
                return judged(again, refused=False)
            if verb == "sweep":
                return "ok" if arrays(out) == arrays(reference) else "differing_results"
            return "ok"

        cases.append(case)
    return cases


def run_families(root: Path, *, quick: bool, timeout_s: float) -> dict[str, Any]:
    """Every family's cases, two at a time; counts per family and in all."""
    reference = root / "reference"
    done = run(cli("sweep", *SWEEP_ARGS, "--out", str(reference)), cwd=root,
               timeout_s=timeout_s, env=env())  # fmt: skip
    if done.returncode != 0 or arrays(reference) is None:
        return {"error": "the reference sweep failed"}
    families: dict[str, list[Callable[[], str]]] = {
        "interrupts": interrupts(root, timeout_s, reference),
        "concurrent_verbs": concurrent_verbs(root, timeout_s),
        "swapped_chunks": swapped_chunks(root, timeout_s, reference),
        "damaged_dirs": damaged_dirs(root, timeout_s, reference),
        "full_disk": full_disk(root, timeout_s, reference),
        "foreign_files": foreign_files(root, timeout_s),
        "environment": environment(root, timeout_s),
        "degenerate_inputs": degenerate_inputs(root, timeout_s),
    }
    if quick:
        families = {k: v[::4] for k, v in families.items()}
    jobs = [(family, i, case) for family, cases in families.items() for i, case in enumerate(cases)]

    def attempt(job):
        family, i, case = job
        try:
            return family, i, case()
        except subprocess.TimeoutExpired:
            return family, i, "other"
        except Exception as err:  # a fault of the trial itself: counted, the others go on
            return family, i, f"other ({type(err).__name__}: {err})"

    with ThreadPoolExecutor(max_workers=2) as pool:
        outcomes = list(pool.map(attempt, jobs))
    per_family = {f: dict.fromkeys(OUTCOMES, 0) for f in families}
    failures = []
    for family, i, outcome in outcomes:
        per_family[family][outcome.split(":")[0].split(" ")[0]] += 1
        if outcome != "ok":
            failures.append({"family": family, "case": i, "outcome": outcome})
    totals = {o: sum(c[o] for c in per_family.values()) for o in OUTCOMES}
    return {"cases": len(jobs), "per_family": per_family, "totals": totals, "failures": failures}

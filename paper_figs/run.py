"""Runs every figure module: cache by config hash, atomic files, numbers.json and REPORT.md.

``gradjax figures`` calls :func:`run_figures`; this module uses the library only (never the
command-line layer), so the figure set runs from a script as well::

    from gradjax.paper_figs.run import run_figures
    run_figures("figures", quick=True)
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import os
import pkgutil
import sys
import tempfile
import time
import traceback
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from gradjax.paper_figs.claims import CLAIMS, FINDINGS, VERDICTS, combined_verdict
from gradjax.utils import interrupts, threads
from gradjax.utils.errors import GradjaxInputError, invalid
from gradjax.utils.files import atomic_savez, atomic_write_text, json_safe

CACHE_DIR = ".cache"


def discover() -> dict[str, ModuleType]:
    """The figure modules (``paper_figs/fig*.py``), by ``NAME``, in file order."""
    from gradjax import paper_figs

    modules: dict[str, ModuleType] = {}
    for info in sorted(pkgutil.iter_modules(paper_figs.__path__), key=lambda i: i.name):
        if info.name.startswith("fig"):
            module = importlib.import_module(f"{paper_figs.__name__}.{info.name}")
            modules[module.NAME] = module
    return modules


def select(modules: dict[str, ModuleType], only: Sequence[str] | None) -> list[str]:
    """The names to run; an unknown name raises with the list of valid names."""
    if not only:
        return list(modules)
    unknown = [name for name in only if name not in modules]
    if unknown:
        raise GradjaxInputError(
            f"--only={unknown[0]!r} is invalid: expected one of {', '.join(modules)}"
        )
    return [name for name in modules if name in only]


def config_hash(module: ModuleType, cfg: dict[str, Any]) -> str:
    """Hash of the figure's config and its module's source: either changing re-runs it."""
    source = inspect.getsource(module)
    payload = json.dumps({"name": module.NAME, "config": cfg, "source": source}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def output_dir(path: str | os.PathLike) -> Path:
    """Creates ``path`` if needed and proves it writable, before any figure starts.

    Args:
      path: the output directory.

    Returns:
      The directory as a :class:`~pathlib.Path`.

    Raises:
      GradjaxInputError: if it cannot be created or written.
    """
    directory = Path(path)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".gradjax-write-test"):
            pass
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise invalid("--out", str(path), f"a writable directory ({reason})") from None
    return directory


def _check_verdicts(name: str, rows: list[dict], numbers: dict, claims: Sequence[str]) -> None:
    seen = set()
    for row in rows:
        if row["claim"] not in claims:
            raise ValueError(f"figure {name}: verdict for {row['claim']} not in its CLAIMS")
        if row["verdict"] not in VERDICTS:
            raise ValueError(f"figure {name}: verdict {row['verdict']!r} not in {VERDICTS}")
        missing = [k for k in row["numbers"] if k not in numbers]
        if missing or not row["numbers"]:
            raise ValueError(f"figure {name}: verdict {row['claim']} cites missing {missing}")
        seen.add(row["claim"])
    if set(claims) - seen:
        raise ValueError(f"figure {name}: no verdict for {sorted(set(claims) - seen)}")


def run_figures(
    out: str | os.PathLike,
    *,
    quick: bool = False,
    only: Sequence[str] | None = None,
    force: bool = False,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Computes and draws every figure, then writes ``numbers.json`` and ``REPORT.md``.

    Args:
      out: output directory (created; must be writable).
      quick: smaller sizes and fewer seeds, same code paths.
      only: figure names to run (default: all); ``numbers.json`` and the report still cover
        every figure that has a cached result in ``out``.
      force: recompute even when a cached result for the same config exists.
      progress: show progress bars.
      log: where progress messages go (default: the progress bar's writer / stderr).

    Returns:
      The ``numbers.json`` content.

    Raises:
      GradjaxInputError: for an unknown figure name.
      RuntimeError: after writing the report, if any figure failed.
    """
    from tqdm.auto import tqdm

    from gradjax.utils.plotting import save_figure

    modules = discover()
    names = select(modules, only)
    out = output_dir(out)
    cache = out / CACHE_DIR
    cache.mkdir(exist_ok=True)
    bar = tqdm(names, desc="figures", unit="fig", disable=not progress, file=sys.stderr)
    write = log or (lambda msg: tqdm.write(msg, file=sys.stderr))
    failures: dict[str, str] = {}
    for name in bar:
        interrupts.check()  # between figures: every finished one is cached
        module = modules[name]
        cfg = module.config(quick)
        key = config_hash(module, cfg)
        stem = cache / f"{name}-{key}"
        done = stem.with_suffix(".json")
        png = out / f"{name}.png"
        if not force and png.exists() and read_cached(stem, key) is not None:
            write(f"[{name}] cached ({key}), skipped")
            continue
        bar.set_postfix_str(name)
        start = time.perf_counter()
        try:
            # The figures' programs are full of batched factorisations (spectra, QR, orthogonal
            # initialisation): gradjax's thread rule holds until their results are on the host.
            with threads.batched_lapack():
                result = module.compute(
                    cfg, lambda msg, name=name: bar.set_postfix_str(f"{name}: {msg}")
                )
                numbers = json_safe(result["numbers"])
                arrays = {k: np.asarray(v) for k, v in result.get("arrays", {}).items()}
            _check_verdicts(name, module.verdicts(cfg, numbers), numbers, module.CLAIMS)
            atomic_savez(stem.with_suffix(".npz"), arrays)
            npz_sha256 = _sha256(stem.with_suffix(".npz"))
            fig = module.plot(cfg, {"numbers": numbers, "arrays": arrays})
            save_figure(fig, out / name)
            seconds = time.perf_counter() - start
            record = {
                "name": name,
                "hash": key,
                "quick": quick,
                "config": cfg,
                "numbers": numbers,
                "seconds": round(seconds, 2),
                "npz_sha256": npz_sha256,
            }
            record["record_sha256"] = _record_digest(record)
            atomic_write_text(done, json.dumps(record, indent=2))
            write(f"[{name}] done in {seconds:.1f} s")
        except OSError:
            raise  # a full disk or an unwritable folder stops the run: no figure can be saved
        except Exception as err:  # one failed figure must not hide the others
            failures[name] = "".join(traceback.format_exception_only(type(err), err)).strip()
            write(f"[{name}] FAILED: {failures[name]}")
            write(traceback.format_exc())
    bar.close()
    numbers = _collect(modules, out, quick)
    atomic_write_text(out / "numbers.json", json.dumps(numbers, indent=2) + "\n")
    atomic_write_text(out / "REPORT.md", render_report(modules, numbers, quick, failures))
    if failures:
        raise RuntimeError("figures failed: " + "; ".join(f"{k}: {v}" for k, v in failures.items()))
    return numbers


def _record_digest(record: dict[str, Any]) -> str:
    """The SHA-256 of a cache record's canonical JSON, its own digest left out."""
    kept = {k: v for k, v in record.items() if k != "record_sha256"}
    return hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest()


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_cached(stem: Path, key: str) -> dict[str, Any] | None:
    """The cached record ``stem.json`` of a finished figure, or None if it cannot be trusted.

    A record is trusted only if it parses as the record of this config (``hash == key``,
    with its numbers and config), its own SHA-256 matches its content (numbers edited by
    hand do not), and the ``.npz`` beside it has the SHA-256 the record holds and loads; a
    garbled, truncated, edited or foreign file means the figure is recomputed.

    Args:
      stem: the cache path without suffix (``.cache/<name>-<key>``).
      key: the config hash.

    Returns:
      The record, or None.
    """
    try:
        record = json.loads(stem.with_suffix(".json").read_text())
        if not isinstance(record, dict) or record.get("hash") != key:
            return None
        if not isinstance(record.get("numbers"), dict) or "config" not in record:
            return None
        if record.get("record_sha256") != _record_digest(record):
            return None  # edited by hand (or by another version): recomputed, never trusted
        npz = stem.with_suffix(".npz")
        if record.get("npz_sha256") != _sha256(npz):
            return None
        with np.load(npz, allow_pickle=False) as arrays:
            for k in arrays.files:
                _ = arrays[k]  # reads every array: a damaged member raises here
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, UnicodeDecodeError):
        return None
    return record


def _collect(modules: dict[str, ModuleType], out: Path, quick: bool) -> dict[str, Any]:
    """Every figure's cached record for the current config, plus its verdict rows."""
    figures = {}
    for name, module in modules.items():
        cfg = module.config(quick)
        key = config_hash(module, cfg)
        record = read_cached(out / CACHE_DIR / f"{name}-{key}", key)
        if record is None:
            continue
        record["title"] = module.TITLE
        record["claims"] = list(module.CLAIMS)
        record["verdicts"] = module.verdicts(cfg, record["numbers"])
        figures[name] = record
    return {"quick": quick, "figures": figures}


def _claim_rows(
    claims: dict[str, str], rows: dict[str, list], *, measured_only: bool = False
) -> list[str]:
    """One table row per claim: every figure's summary, one combined verdict."""
    out = []
    for claim, text in claims.items():
        found = rows.get(claim, [])
        if not found:
            if not measured_only:
                out.append(f"| {claim} | {text} | not measured | — | — |")
            continue
        verdict = combined_verdict([row["verdict"] for _, row in found])
        # Each figure's summary, named when there are several; "|" would split the columns.
        parts = [
            (f"*{name}:* " if len(found) > 1 else "") + row["summary"].replace("|", "\\|")
            for name, row in found
        ]
        links = ", ".join(f"[{name}](#{name})" for name in dict.fromkeys(n for n, _ in found))
        out.append(f"| {claim} | {text} | **{verdict}** | {' '.join(parts)} | {links} |")
    return out


def render_report(
    modules: dict[str, ModuleType],
    numbers: dict[str, Any],
    quick: bool,
    failures: dict[str, str],
) -> str:
    """The Markdown report: claims table with verdicts, then one section per figure."""
    import gradjax

    figures = numbers["figures"]
    rows = {}
    for name, record in figures.items():
        for row in record["verdicts"]:
            rows.setdefault(row["claim"], []).append((name, row))
    mode = "quick (reduced sizes)" if quick else "full"
    lines = [
        "# gradjax: the article's claims, measured",
        "",
        f"Generated by `gradjax figures` (gradjax {gradjax.__version__}, {mode} run). Every "
        "number below is in `numbers.json` with the configuration that produced it; re-running "
        "the command with the same seeds reproduces it on the same machine.",
        "",
        "## Claims and verdicts",
        "",
        "| # | the article says | verdict | what was measured | figure |",
        "|---|---|---|---|---|",
    ]
    lines += _claim_rows(CLAIMS, rows)
    found = _claim_rows(FINDINGS, rows, measured_only=True)
    if found:
        lines += [
            "",
            "## Findings beyond the article",
            "",
            "| # | finding | verdict | what was measured | figure |",
            "|---|---|---|---|---|",
            *found,
        ]
    if failures:
        lines += ["", "## Failed figures", ""]
        lines += [f"- `{name}`: {msg}" for name, msg in failures.items()]
    lines += ["", "## Figures", ""]
    for name, module in modules.items():
        if name not in figures:
            continue
        record = figures[name]
        lines += [
            f"### {name}",
            "",
            f"**{module.TITLE}**"
            + (f" (claims {', '.join(module.CLAIMS)})" if module.CLAIMS else ""),
            "",
            f"![{name}]({name}.png)",
            "",
            f"*Methods.* {' '.join(module.METHODS.split())}",
            "",
            f"*Run.* {record['seconds']} s; config `{json.dumps(record['config'])}`.",
            "",
        ]
    return "\n".join(lines) + "\n"

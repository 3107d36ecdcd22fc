"""The main job: ``gradjax figures --quick`` end to end, the cache, and its bad input."""

import json
import re

import jax
import pytest

from gradjax.commands.cli import main
from gradjax.paper_figs.claims import CLAIMS, FINDINGS
from gradjax.paper_figs.run import discover, run_figures


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    # The quick figures compile about six hundred small programs and run each of them once or
    # a few times, so their time is mostly XLA's optimisation passes, which cost more than
    # they save here. Switching them off changes how the programs are compiled, not what they
    # compute; the compiled programs are dropped afterwards, so no later test runs them.
    out = tmp_path_factory.mktemp("figures")
    previous = jax.config.values["jax_disable_most_optimizations"]
    jax.config.update("jax_disable_most_optimizations", True)
    try:
        code = main(["figures", "--quick", "--out", str(out)])
    finally:
        jax.config.update("jax_disable_most_optimizations", previous)
        jax.clear_caches()
    return code, out


def test_every_claim_has_a_verdict_backed_by_numbers(quick_run):
    code, out = quick_run
    assert code == 0
    numbers = json.loads((out / "numbers.json").read_text())
    figures = numbers["figures"]
    covered = set()
    for name, record in figures.items():
        for row in record["verdicts"]:
            assert row["verdict"] in ("confirmed", "nuanced", "contradicted")
            assert row["numbers"], f"{name} {row['claim']} cites no number"
            for key in row["numbers"]:
                value = record["numbers"][key]
                assert value is not None
                # Every cited number appears in the summary's figure record and is a number
                # (or the explicit strings for non-finite values).
                assert isinstance(value, (int, float, list)) or value in ("inf", "-inf", "nan")
            covered.add(row["claim"])
    expected = set(CLAIMS) | set(FINDINGS)
    assert covered == expected, f"claims without a verdict: {expected - covered}"
    report = (out / "REPORT.md").read_text()
    for claim in expected:
        # One row and one verdict per claim, however many figures bear on it.
        rows = re.findall(rf"^\| {claim} \|.*$", report, flags=re.M)
        assert len(rows) == 1, (claim, rows)
        assert len(re.findall(r"\*\*(confirmed|nuanced|contradicted)\*\*", rows[0])) == 1
    assert "not measured" not in report
    # No dangling text from a missing value.
    assert "from step none" not in report and not re.search(r";\s*\|", report)


def test_every_figure_is_written_as_png_and_pdf(quick_run):
    _, out = quick_run
    for name in discover():
        assert (out / f"{name}.png").stat().st_size > 10_000
        assert (out / f"{name}.pdf").stat().st_size > 1_000
        assert f"![{name}]({name}.png)" in (out / "REPORT.md").read_text()
    assert not list(out.glob(".*.tmp"))


def test_rerun_uses_the_cache(quick_run, monkeypatch):
    _, out = quick_run
    for module in discover().values():

        def refuse(*args, **kwargs):
            raise AssertionError("a cached figure was recomputed")

        monkeypatch.setattr(module, "compute", refuse)
    numbers = run_figures(out, quick=True, progress=False, log=lambda msg: None)
    assert set(numbers["figures"]) == set(discover())


def test_unknown_only_lists_valid_names(tmp_path, capsys):
    code = main(["figures", "--quick", "--only", "nope", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and "--only='nope'" in err and "activations" in err
    assert not (tmp_path / "o").exists()  # nothing was started


def test_unwritable_out_fails_before_work(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code = main(["figures", "--quick", "--out", str(blocker / "sub")])
    assert code == 2 and "--out=" in capsys.readouterr().err


def test_a_cache_record_edited_by_hand_is_recomputed_not_trusted(tmp_path):
    logged = []
    run_figures(tmp_path, quick=True, only=["activations"], progress=False, log=logged.append)
    (record,) = (tmp_path / ".cache").glob("activations-*.json")
    data = json.loads(record.read_text())
    data["numbers"] = {"edited": 1.0}  # a hand-edited cache: its own digest no longer fits
    record.write_text(json.dumps(data))
    logged.clear()
    numbers = run_figures(
        tmp_path, quick=True, only=["activations"], progress=False, log=logged.append
    )
    assert any("[activations] done" in line for line in logged), logged  # recomputed
    assert "edited" not in numbers["figures"]["activations"]["numbers"]

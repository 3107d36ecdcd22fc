"""``gradjax figures``: every figure, ``numbers.json`` and the claims report ``REPORT.md``."""

from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    p = sub.add_parser(
        "figures",
        help="reproduce every figure, numbers.json and the claims report",
        description="Runs every experiment behind the claims report and writes DIR/*.png, "
        "DIR/*.pdf, DIR/numbers.json and DIR/REPORT.md. Finished figures are cached by "
        "config hash and skipped on a re-run unless --force.",
    )
    p.add_argument("--out", default="figures", help="output directory (default figures)")
    p.add_argument("--quick", action="store_true", help="smaller sizes, same code paths")
    p.add_argument("--only", nargs="+", metavar="NAME", help="run only these figures")
    p.add_argument("--force", action="store_true", help="ignore cached results")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="write into --out even where it holds files of the same names that gradjax did "
        "not write (refused otherwise)",
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    # The figure set is installed as gradjax.paper_figs and imported only when asked for.
    from gradjax.commands.common import writable_dir
    from gradjax.paper_figs.run import CACHE_DIR, discover, run_figures, select
    from gradjax.utils.files import claim_output_dir

    modules = discover()
    select(modules, args.only)  # an unknown name fails before any work
    out = writable_dir(args.out)
    figures = [f"{name}.{ext}" for name in modules for ext in ("png", "pdf")]
    claim_output_dir(
        out,
        "figures",
        ["REPORT.md", "numbers.json", *figures],
        overwrite=args.overwrite,
        legacy=lambda d: (d / CACHE_DIR).is_dir(),  # a figure cache: gradjax wrote it
    )
    try:
        run_figures(out, quick=args.quick, only=args.only, force=args.force)
    except RuntimeError as err:
        print(f"gradjax figures: {err}")
        return 1
    print(f"report: {out / 'REPORT.md'}")
    return 0

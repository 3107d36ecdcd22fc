"""The figure set behind ``gradjax figures``: one module per figure.

This folder installs as ``gradjax.paper_figs`` (see ``pyproject.toml``); the library never
imports it, only the ``figures`` command does.

Every figure module ``paper_figs/fig<NN>_<name>.py`` defines:

``NAME: str``
    The figure's name (what ``--only`` takes), e.g. ``"activations"``; output files are
    ``<out>/<NAME>.png`` and ``<out>/<NAME>.pdf``.
``TITLE: str``
    One line for the report.
``CLAIMS: tuple[str, ...]``
    The article's claims (``"C1"`` .. ``"C13"``, see the claims table) this figure decides.
``METHODS: str``
    A short methods note for the report (what was measured, how, against what).
``config(quick: bool) -> dict``
    JSON-safe settings (sizes, seeds, grids). ``quick=True`` means smaller widths and fewer
    seeds through the same code paths. The dict is hashed for the figure cache.
``compute(cfg: dict, progress: Callable[[str], None]) -> dict``
    Runs the experiment by calling the library (never a copy of its logic) and returns
    ``{"numbers": {...}, "arrays": {...}}``: ``numbers`` JSON-safe scalars/lists that the
    report quotes (finite floats, or the strings "inf"/"nan"), ``arrays`` NumPy arrays the
    plot needs. ``progress(msg)`` reports progress within long figures.
``plot(cfg: dict, result: dict) -> matplotlib.figure.Figure``
    Pure: data in, figure out (use :mod:`gradjax.plotting`: ``styled``, ``new_figure``,
    ``band``, ``PALETTE``).
``verdicts(cfg: dict, numbers: dict) -> list[dict]``
    One row per claim in ``CLAIMS``: ``{"claim": "C3", "verdict": "confirmed" | "nuanced" |
    "contradicted", "summary": "one or two sentences quoting the numbers",
    "numbers": ["key", ...]}``, where every listed key is in ``numbers``. The verdict is
    decided from the numbers (thresholds in code), never hard-coded.

:mod:`gradjax.paper_figs.run` discovers the modules, caches finished figures by config hash,
writes files atomically, and assembles ``numbers.json`` and ``REPORT.md``.
"""

"""gradjax's benchmark suite.

Every benchmark is a module ``benchmarks/bench_<name>.py`` exposing ``NAME`` and
``run(quick: bool = False) -> dict``; the dict follows the JSON layout in
``benchmarks/README.md`` (name, config, machine, timings_s, ratios, accuracy, targets). The
runner (``gradjax bench``) discovers the modules, so adding a benchmark touches no other file.
"""

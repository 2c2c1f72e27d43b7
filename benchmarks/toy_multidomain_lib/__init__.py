"""The library of ``benchmarks/toy_multidomain.py`` (the command line, and the benchmark's description):
:mod:`~toy_multidomain_lib.experiment` (workers, warm starts, runs, noise runs),
:mod:`~toy_multidomain_lib.statistics` and :mod:`~toy_multidomain_lib.rendering` (markdown, compare tables, plot).
Imported from ``benchmarks/`` (the script's folder, on ``sys.path`` when it runs)."""

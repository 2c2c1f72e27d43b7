"""Tools above the core ``mgs`` package that need more than torch: the ``tools`` extra (transformers, tokenizers,
datasets; matplotlib for plots, the ``plot`` extra).

- :mod:`mgs_tools.diagnose`: ``mgs-diagnose``, per-module gradient cosines between domains before training.
- :mod:`mgs_tools.toy`: toy multi-domain tasks and a tiny causal LM built locally (the demo's and the tests').
- :mod:`mgs_tools.tables`: local tables (json/jsonl/parquet/csv files, saved datasets) as ``datasets.Dataset``.

Importing this package imports none of them (nor their dependencies); import the submodule you use.
"""

__all__: list[str] = []

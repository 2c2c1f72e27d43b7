"""``mgs-diagnose``: measure how much a model's domains conflict, module by module, before training.

For each domain, the gradient of the (weighted) negative log-likelihood of the completion given the
prompt is computed over the domain's rows, in micro-batches. Each domain's rows are shuffled and split
into two disjoint halves, and each half's gradient is kept apart. From the per-module Gram matrix of
these 2K gradients (K domains × 2 halves) the report gives, per module:

- the cosine between every pair of domains (each domain's gradient = the sum of its two halves), the
  global cosine (all diagnosed parameters as one vector) and the conflict fraction (share of modules
  with a negative cosine);
- the **noise floor**: the cosine between the two halves of the SAME domain. A module whose floor is
  near 0 has gradients dominated by batch noise at this batch size, so its cross-domain cosines say
  little about interference;
- a **denoised cosine**, ``mean_ij(a_i·b_j) / sqrt((a_1·a_2)(b_1·b_2))``: cross-half dot products
  have independent noise, so numerator and denominator are unbiased estimates of ``μ_a·μ_b`` and
  ``|μ_a|·|μ_b|`` (up to the same factor). Undefined (NaN) where a domain's halves disagree
  (``a_1·a_2 ≤ 0``); a ratio of noisy estimates, so it can leave [-1, 1].

The loss, and the memory a sweep takes (``layers_per_sweep``): :mod:`mgs_tools.diagnose._measure`.

The package is split as the pipeline is: :mod:`~mgs_tools.diagnose._measure` (layout, encoding, the
gradient and Gram measurement, :func:`diagnose`), :mod:`~mgs_tools.diagnose._results` (:class:`DiagnoseResult`
and what is derived from it, its JSON), :mod:`~mgs_tools.diagnose._report` (terminal table, heatmap) and
:mod:`~mgs_tools.diagnose.cli` (:func:`load_rows`, model loading, :func:`main`).

Command line: ``mgs-diagnose --help`` or ``python -m mgs_tools.diagnose --help``; see ``docs/diagnose.md``.
Only torch (and the core ``mgs``) is imported at import time: transformers, datasets, matplotlib and tqdm are
imported where they are used, so :func:`diagnose` works with any model whose output has ``.logits``.
"""

from mgs_tools.diagnose._measure import diagnose, split_halves
from mgs_tools.diagnose._results import DiagnoseError, DiagnoseResult, ModuleInfo
from mgs_tools.diagnose.cli import load_rows, main

__all__ = ["DiagnoseError", "DiagnoseResult", "ModuleInfo", "diagnose", "load_rows", "main", "split_halves"]

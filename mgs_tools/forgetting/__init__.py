"""``mgs-forgetting``: why sequential multi-domain training forgets, measured on your checkpoints.

From a base checkpoint and the checkpoint after each training phase (full models or PEFT adapters), and each
domain's rows (prompt and completion), :func:`analyze` computes:

1. **update sparsity** per phase, per module, per family and overall (share of parameters with ``|Δ| <
   threshold``, ``‖Δ‖/‖W‖``, a histogram of ``|Δ|``);
2. **edit overlap**: per phase, the top-k % changed units per layer and kind (:mod:`~mgs_tools.forgetting._units`:
   MLP neurons, query heads, key-value heads) and the Jaccard overlap of every pair of phases;
3. **route overlap**: per domain, the top-q % active units and their Jaccard overlap across domains;
4. **the damage decomposition** of the earlier domain's loss under the later update ``Δ``: actual change, first
   order ``g·Δ``, second order ``½ ΔᵀHΔ`` by exact Hessian-vector products, per module (the shares add up), and
   the gradient cosines of the domains, global and per module;
5. **conflict-subspace rollback** (:mod:`~mgs_tools.forgetting._rollback`): the recovery curve of every domain
   over the share of units restored to their pre-phase values, MLP only and MLP + attention.

The package: :mod:`~mgs_tools.forgetting._checkpoint` (tensors read one at a time), ``_units``, ``_measure`` (the
measurements and evaluations), ``_rollback``, ``_analyze`` (:func:`analyze`), ``_report`` (summary, PNG) and
:mod:`~mgs_tools.forgetting.cli`. Only torch and the core are imported here; transformers, peft, safetensors and
matplotlib where they are used. Command line: ``mgs-forgetting --help``; see ``docs/forgetting.md``.
"""

from mgs_tools.forgetting._analyze import PAPER_ROLLBACKS, analyze
from mgs_tools.forgetting._checkpoint import Checkpoint, CheckpointError
from mgs_tools.forgetting._report import plot, summary
from mgs_tools.forgetting._rollback import conflict_scores, rolled_back_state, rollback_tensors, select_units
from mgs_tools.forgetting._units import UNIT_KINDS, UnitError, UnitGroup, unit_groups

__all__ = ["Checkpoint", "CheckpointError", "PAPER_ROLLBACKS", "UNIT_KINDS", "UnitError", "UnitGroup", "analyze",
           "conflict_scores", "plot", "rolled_back_state", "rollback_tensors", "select_units", "summary", "unit_groups"]

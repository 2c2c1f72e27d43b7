"""``MGSGRPOConfig.normalize_advantage_by_domain``: the TRL side of per-domain advantage normalisation.

``GRPOTrainer._generate_and_score_completions`` computes the advantages of the whole generation batch
(every rank's rows, all ``steps_per_generation`` slices) and keeps this rank's slice. The trainer calls
:func:`normalize_generation_batch` on that output once the rows' domain ids are known: this rank's
advantages and ids are gathered in rank order (the order TRL sliced them in), every domain's standard
deviation is taken over all of them (:func:`mgs.integration.normalize_by_domain`), and this rank keeps
its own rows again. Every rank computes the same deviations; the batch is split into micro-batches only
afterwards, so every slice sees the same scale.
"""

from __future__ import annotations

import torch
from accelerate.utils import gather

from mgs.integration import normalize_by_domain


def normalize_generation_batch(advantages: torch.Tensor, ids: torch.Tensor, num_domains: int, *,
                               process_index: int, num_processes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's advantages ``[n]`` divided by their domain's deviation over every rank's rows (TRL's rank-order
    slicing: rank ``r`` holds rows ``r*n .. (r+1)*n-1``), and the ``[K]`` deviations.

    Raises:
        ValueError: the advantages are not one value per row (a subclass that returns token-level advantages).
    """
    if advantages.ndim != 1:
        raise ValueError("MGSGRPOConfig.normalize_advantage_by_domain=True needs one advantage per completion (shape "
                         f"[rows]); this trainer's advantages have shape {tuple(advantages.shape)}. Normalise them "
                         "per domain in the subclass that computes them, or turn the setting off.")
    local = advantages.shape[0]
    if num_processes > 1:
        every, every_ids = gather(advantages), gather(ids.to(advantages.device))
    else:
        every, every_ids = advantages, ids
    normalized, std = normalize_by_domain(every, every_ids, num_domains)
    return normalized[process_index * local:(process_index + 1) * local], std

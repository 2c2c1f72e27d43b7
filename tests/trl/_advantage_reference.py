"""The tests' own reference for per-domain advantage normalisation, and trainers that record advantages.

The reference is plain Python (``statistics.pstdev`` per domain), independent of ``mgs.integration.advantage``.
"""

from __future__ import annotations

import statistics

import torch
from _tiny import DOMAINS, StubGeneration
from trl import GRPOTrainer


def reference_normalized(advantages: list[float], domains: list[str]) -> list[float]:
    """A_i / (pstdev of A over the rows of A_i's domain + 1e-4)."""
    std = {d: statistics.pstdev([a for a, e in zip(advantages, domains) if e == d]) for d in set(domains)}
    return [a / (std[d] + 1e-4) for a, d in zip(advantages, domains)]


class RecordingGRPO(GRPOTrainer):
    """Placed between MGSGRPOTrainer and GRPOTrainer in the MRO: records TRL's own advantages (before MGS)."""

    def _generate_and_score_completions(self, inputs):
        output = super()._generate_and_score_completions(inputs)
        if self.model.training:
            self.__dict__.setdefault("raw", []).append(
                (output["advantages"].detach().clone().cpu(), [row["domain"] for row in inputs]))
        return output


def make_recording_mgs_class():
    from trl_mgs import MGSGRPOTrainer

    class RecordingMGS(StubGeneration, MGSGRPOTrainer, RecordingGRPO):
        """Records TRL's advantages (``raw``) and the advantages MGSGRPOTrainer trains on (``final``)."""

        def _generate_and_score_completions(self, inputs):
            output = super()._generate_and_score_completions(inputs)
            if self.model.training:
                self.__dict__.setdefault("final", []).append(output["advantages"].detach().clone().cpu())
            return output

    return RecordingMGS


class ReferenceNormalizedGRPO(StubGeneration, GRPOTrainer):
    """Stock GRPOTrainer whose advantages are replaced by :func:`reference_normalized` over every rank's rows."""

    def _generate_and_score_completions(self, inputs):
        from accelerate.utils import gather_object

        output = super()._generate_and_score_completions(inputs)
        local = output["advantages"]
        every = gather_object(local.tolist())
        domains = gather_object([row["domain"] for row in inputs])
        assert set(domains) <= set(DOMAINS)
        normalized = reference_normalized(every, domains)
        rank, n = self.accelerator.process_index, len(local)
        output["advantages"] = torch.tensor(normalized[rank * n:(rank + 1) * n], dtype=local.dtype, device=local.device)
        return output

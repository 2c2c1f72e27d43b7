r"""Step 3c — smoothed decisions: the method reads an exponential moving average of each group's Gram matrix.

Per-step domain gradients are noisy (two batches of one domain can have cosine ≈ 0.3), so per-step
PCGrad partly projects against noise. With decay :math:`\beta`, each entry of each group's Gram
matrix is averaged over the steps where both of its domains were present:

.. math:: E_{ij} \leftarrow \beta E_{ij} + (1 - \beta) G_{ij}, \qquad
          \hat E_{ij} = E_{ij} / (1 - \beta^{t_{ij}})

(:math:`t_{ij}` counts those updates; the division removes the bias of the zero start, as Adam's
does). The method's weights are computed from :math:`\hat E`, restricted to the domains present in
this step, and applied to the current gradients. A domain absent in a step keeps its rows. The state
is :math:`K \times K` per group: no gradient-sized memory. This is a variant, not the MGS paper's
method; :math:`\beta = 0` is plain per-step surgery, bit for bit.
"""

from __future__ import annotations

from typing import Any

import torch


class GramEMA:
    """Bias-corrected EMA of per-group Gram matrices ``[M, K, K]`` (float64), updated per present pair."""

    def __init__(self, decay: float) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"gram_ema decay must be in [0, 1); got {decay!r}.")
        self.decay = decay
        self.average: torch.Tensor | None = None  # [M, K, K]
        self.updates: torch.Tensor | None = None  # [M, K, K] number of updates per entry

    def update(self, gram: torch.Tensor, usable: torch.Tensor) -> torch.Tensor:
        """Fold in this step's ``gram`` for the pairs where ``usable`` ``[M, K]`` holds for both domains; return
        the bias-corrected average restricted to those pairs (other entries zero)."""
        pairs = usable.unsqueeze(2) & usable.unsqueeze(1)
        if self.decay == 0.0:
            return torch.where(pairs, gram, 0.0)
        if self.average is None:
            self.average, self.updates = torch.zeros_like(gram), torch.zeros_like(gram)
        assert self.updates is not None
        grown = gram.shape[1] - self.average.shape[1]
        if grown > 0 and self.average.shape[0] == gram.shape[0]:  # domains discovered since: new rows start empty
            self.average = torch.nn.functional.pad(self.average, (0, grown, 0, grown))
            self.updates = torch.nn.functional.pad(self.updates, (0, grown, 0, grown))
        if self.average.shape != gram.shape:
            raise ValueError(f"the Gram EMA has shape {tuple(self.average.shape)} but this step's Gram matrices are "
                             f"{tuple(gram.shape)}: the groups changed during the run.")
        self.average = torch.where(pairs, self.decay * self.average + (1.0 - self.decay) * gram, self.average)
        self.updates = self.updates + pairs.to(self.updates.dtype)
        correction = 1.0 - torch.pow(self.decay, self.updates)
        return torch.where(pairs, self.average / torch.where(pairs, correction, 1.0), 0.0)

    def state_dict(self) -> dict[str, Any]:
        cpu = (lambda t: None if t is None else t.detach().cpu().clone())
        return {"decay": self.decay, "average": cpu(self.average), "updates": cpu(self.updates)}

    def load_state_dict(self, state: dict[str, Any], device: torch.device) -> None:
        if state["decay"] != self.decay:
            raise ValueError(f"checkpoint gram_ema decay {state['decay']} differs from the configured {self.decay}.")
        move = (lambda t: None if t is None else t.to(device=device, dtype=torch.float64))
        self.average, self.updates = move(state["average"]), move(state["updates"])

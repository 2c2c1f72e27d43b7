r"""TorchJD Gramian weightings (PyPI ``torchjd``, the ``torchjd`` extra) applied per group.

A TorchJD weighting maps one :math:`K \times K` Gramian :math:`G = J J^\top` to weights :math:`w`, and
its aggregator returns :math:`J^\top w`. Per group that is exactly our contract, so the core only
feeds each group's Gram matrix, restricted to the domains present in it (absent domains get weight
1 on a zero gradient), and keeps TorchJD's scaling: e.g. UPGrad averages the projected gradients
(weights sum to about 1, not K as PCGrad's do), so learning rates do not transfer between methods.

TorchJD solves one matrix at a time on the host: apply() copies the ``[M, K, K]`` Gram matrices to
the CPU once (one device sync) and loops over the M groups. Stateful weightings (GradVac's target
cosines) get one instance per group. TorchJD's random choices draw from the global CPU generator,
so each call runs inside ``torch.random.fork_rng`` seeded from surgery's ``(seed, step)`` generator:
deterministic, and the caller's RNG is left as it was.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

TORCHJD_WEIGHTINGS: dict[str, tuple[str, dict[str, Any]]] = {
    "upgrad": ("UPGradWeighting", {}),
    "mgda": ("MGDAWeighting", {}),
    "dualproj": ("DualProjWeighting", {}),
    "aligned_mtl": ("AlignedMTLWeighting", {}),
    "imtl_g": ("IMTLGWeighting", {}),
    "gradvac": ("GradVacWeighting", {}),
    "cagrad": ("CAGradWeighting", {"c": 0.5}),
}
"""Method names → (TorchJD weighting class, constructor arguments). CAGrad's ``c = 0.5`` is its paper's default."""


def _import_torchjd_aggregation() -> Any:
    try:
        import torchjd.aggregation
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            "TorchJD methods need the `torchjd` package: pip install 'mgs-rl[torchjd]' "
            "(or pip install 'torchjd[quadprog-projector,cagrad]')."
        ) from error
    return torchjd.aggregation


class TorchJDMethod:
    """A :class:`~mgs.methods.GramMethod` running a TorchJD weighting on each group's Gram matrix.

    Args:
        weighting: a method name from :data:`TORCHJD_WEIGHTINGS`, or a zero-argument factory returning a
            TorchJD ``Weighting`` (called once per group, so stateful weightings keep per-group state).
    """

    def __init__(self, weighting: str | Callable[[], Callable[[torch.Tensor], torch.Tensor]]) -> None:
        if isinstance(weighting, str):
            if weighting not in TORCHJD_WEIGHTINGS:
                raise ValueError(f"unknown TorchJD method {weighting!r}; choose one of {sorted(TORCHJD_WEIGHTINGS)}.")
            aggregation = _import_torchjd_aggregation()
            cls_name, kwargs = TORCHJD_WEIGHTINGS[weighting]
            cls = getattr(aggregation, cls_name)
            self.name = weighting
            self._factory: Callable[[], Callable[[torch.Tensor], torch.Tensor]] = lambda: cls(**kwargs)
            self._factory()  # fail now, not at the first step, when an optional solver is missing
        else:
            self.name = getattr(weighting, "__name__", repr(weighting))
            self._factory = weighting
        self._per_group: dict[int, Callable[[torch.Tensor], torch.Tensor]] = {}

    def weighting_for(self, group: int) -> Callable[[torch.Tensor], torch.Tensor]:
        if group not in self._per_group:
            self._per_group[group] = self._factory()
        return self._per_group[group]

    def __call__(self, gram: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        m, k, _ = gram.shape
        host = gram.detach().to("cpu", torch.float64)
        weights = torch.ones(m, k, dtype=torch.float64)
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for g in range(m):
                present = (host[g].diagonal() > 0).nonzero().squeeze(1)
                if len(present) == 0:
                    continue
                sub = host[g].index_select(0, present).index_select(1, present)
                with torch.no_grad():
                    weights[g, present] = self.weighting_for(g)(sub).to(torch.float64)
        return weights.to(gram.device)

    def __repr__(self) -> str:
        return f"TorchJDMethod({self.name!r})"


def is_torchjd_weighting(obj: object) -> bool:
    """Whether ``obj`` is a TorchJD ``Weighting`` instance (passed directly as ``method``)."""
    return type(obj).__module__.startswith("torchjd.")

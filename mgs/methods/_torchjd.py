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

Checkpoints: TorchJD's stateful weightings have ``reset()`` but no state accessors, so
:data:`TORCHJD_STATE` reads and writes their state attributes for the classes mgs knows (GradVac:
its target cosines ``_phi_t``, ``[K', K']`` over the K' domains present at the group's last step, and
the ``(K', dtype)`` key it derives from them). :meth:`TorchJDMethod.state_dict` holds one such entry
per group, tensors only. Another stateful weighting passed as an instance still runs, with a warning
that its state is not checkpointed (a resumed run restarts it from scratch).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import warnings

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


def _gradvac_state(weighting: Any) -> dict[str, torch.Tensor]:
    phi = weighting._phi_t
    return {} if phi is None else {"phi": phi.detach().clone()}


def _gradvac_load(weighting: Any, state: dict[str, torch.Tensor]) -> None:
    weighting.reset()
    if "phi" in state:
        phi = state["phi"].detach().to("cpu").clone()
        weighting._phi_t = phi
        weighting._state_key = (phi.shape[0], phi.dtype)  # what GradVacWeighting._ensure_state compares


TORCHJD_STATE: dict[str, tuple[Callable[[Any], dict[str, Any]], Callable[[Any, dict[str, Any]], None]]] = {
    "GradVacWeighting": (_gradvac_state, _gradvac_load),
}
"""TorchJD weighting class name → (read its state, restore its state): the stateful weightings mgs checkpoints."""

_STATE_ATTRIBUTES = {"GradVacWeighting": ("_phi_t", "_state_key", "reset")}


def _state_accessors(weighting: object) -> tuple[Callable, Callable] | None:
    for cls in type(weighting).__mro__:
        if cls.__name__ in TORCHJD_STATE:
            missing = [a for a in _STATE_ATTRIBUTES[cls.__name__] if not hasattr(weighting, a)]
            if missing:  # pragma: no cover - depends on the torchjd version
                raise RuntimeError(
                    f"{cls.__name__} of this torchjd version has no {missing}, which mgs reads to checkpoint its "
                    "state; install torchjd 0.18 or update mgs.methods._torchjd.TORCHJD_STATE."
                )
            return TORCHJD_STATE[cls.__name__]
    return None


def _is_stateful(weighting: object) -> bool:
    return any(cls.__name__ == "Stateful" and cls.__module__.startswith("torchjd") for cls in type(weighting).__mro__)


class TorchJDMethod:
    """A :class:`~mgs.methods.GramMethod` running a TorchJD weighting on each group's Gram matrix.

    Args:
        weighting: a method name from :data:`TORCHJD_WEIGHTINGS`, or a zero-argument factory returning a
            TorchJD ``Weighting`` (called once per group, so stateful weightings keep per-group state).

    Attributes:
        name: the method name, or the factory's name.
        stateful: whether the weighting keeps state that :meth:`state_dict` saves (GradVac).
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
        else:
            self.name = getattr(weighting, "__name__", repr(weighting))
            self._factory = weighting
        probe = self._factory()  # fail now, not at the first step, when an optional solver is missing
        self._accessors = _state_accessors(probe)
        self.stateful = self._accessors is not None
        if self._accessors is None and _is_stateful(probe):
            warnings.warn(
                f"{type(probe).__name__} is stateful, but mgs does not know how to checkpoint its state: "
                "GradientSurgery.state_dict() leaves it out, so a resumed run restarts it.",
                stacklevel=3,
            )
        self._per_group: dict[int, Callable[[torch.Tensor], torch.Tensor]] = {}

    def weighting_for(self, group: int) -> Callable[[torch.Tensor], torch.Tensor]:
        """The weighting instance of group ``group`` (built on first use)."""
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

    def state_dict(self) -> dict[str, Any]:
        """``{"groups": {group index: that group's weighting state}}`` for a stateful weighting, else ``{}``.

        Returns:
            Tensors only (see :data:`TORCHJD_STATE`), so ``torch.load(weights_only=True)`` reads it back.
        """
        if self._accessors is None:
            return {}
        read = self._accessors[0]
        return {"groups": {g: read(w) for g, w in sorted(self._per_group.items())}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned: groups it lists get their state, the others start afresh.

        Args:
            state: a :meth:`state_dict` of a method with the same weighting.
        """
        if self._accessors is None:
            if state:
                raise ValueError(f"TorchJD method {self.name!r} keeps no state mgs restores; got {sorted(state)}.")
            return
        if set(state) != {"groups"} or not isinstance(state["groups"], dict):
            raise ValueError(f"not a state of TorchJD method {self.name!r}: expected {{'groups': {{...}}}}, got keys "
                             f"{sorted(state)}.")
        write = self._accessors[1]
        self._per_group = {}
        for g, group_state in state["groups"].items():
            write(self.weighting_for(int(g)), group_state)

    def __repr__(self) -> str:
        return f"TorchJDMethod({self.name!r})"


def is_torchjd_weighting(obj: object) -> bool:
    """Whether ``obj`` is a TorchJD ``Weighting`` instance (passed directly as ``method``)."""
    return type(obj).__module__.startswith("torchjd.")

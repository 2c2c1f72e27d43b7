"""What :func:`~mgs_tools.diagnose.diagnose` returns: the per-module Gram matrices of the 2K half-domain gradients
(K domains × 2 halves), every quantity derived from them (cosines, noise floors, denoised cosines, gradient
norms; see :mod:`mgs_tools.diagnose`), and their JSON document. The terminal table and the heatmap are drawn
by :mod:`mgs_tools.diagnose._report`."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any

import torch

from mgs_tools.diagnose import _report


class DiagnoseError(ValueError):
    """Bad input to the diagnosis (columns, domains, rows); the command line prints it as a usage error."""


@dataclass(frozen=True)
class ModuleInfo:
    """One diagnosed group of parameters (a leaf module under the default ``granularity="module"``)."""

    name: str
    layer: int | None
    """Decoder layer index, or None for modules outside the layers (embedding, final norm, lm_head)."""
    kind: str
    """The heatmap column: the group's name inside its layer (``q_proj``, ``mlp``, ``embed_tokens`` …)."""
    family: str
    """mgs's module kind (:data:`mgs.KINDS`): attention, mlp, embedding, norm or other."""
    numel: int


@dataclass
class DiagnoseResult:
    """The per-module Gram matrices of the 2K half-domain gradients, and everything derived from them.

    ``gram[m, 2*d + h, 2*e + g]`` is the dot product, over module ``m``'s parameters, of the gradient of
    domain ``domains[d]``'s half ``h`` with domain ``domains[e]``'s half ``g`` (float64).
    """

    domains: list[str]
    modules: list[ModuleInfo]
    gram: torch.Tensor
    rows: dict[str, int]
    tokens: dict[str, int]
    model: str = ""
    settings: dict[str, Any] = field(default_factory=dict)

    # -- derived quantities (tensors over modules; NaN where a norm is zero) -------------------------

    def _index(self, domain: str) -> int:
        if domain not in self.domains:
            raise DiagnoseError(f"unknown domain {domain!r}; the diagnosed domains are {self.domains}.")
        return self.domains.index(domain)

    def _full(self, gram: torch.Tensor) -> torch.Tensor:
        """[..., 2K, 2K] → [..., K, K]: Gram of the whole-domain gradients (sum of the two halves)."""
        k = len(self.domains)
        return gram.reshape(*gram.shape[:-2], k, 2, k, 2).sum(dim=(-3, -1))

    @staticmethod
    def _cos(dot: torch.Tensor, sq_a: torch.Tensor, sq_b: torch.Tensor) -> torch.Tensor:
        denom = (sq_a * sq_b).sqrt()
        return torch.where(denom > 0, dot / denom, torch.full_like(dot, math.nan))

    def cosine(self, a: str, b: str) -> torch.Tensor:
        """Per-module cosine between domains ``a`` and ``b``."""
        i, j = self._index(a), self._index(b)
        full = self._full(self.gram)
        return self._cos(full[:, i, j], full[:, i, i], full[:, j, j])

    def global_cosine(self, a: str, b: str) -> float:
        """Cosine between ``a``'s and ``b``'s gradients over all diagnosed parameters."""
        i, j = self._index(a), self._index(b)
        full = self._full(self.gram.sum(0))
        return float(self._cos(full[i, j], full[i, i], full[j, j]))

    def conflict_frac(self, a: str, b: str) -> float:
        """Share of modules (with both gradients non-zero) where ``a`` and ``b`` have a negative cosine."""
        cos = self.cosine(a, b)
        defined = ~cos.isnan()
        return float((cos[defined] < 0).double().mean()) if defined.any() else math.nan

    def noise_floor(self, domain: str) -> torch.Tensor:
        """Per-module cosine between the two disjoint halves of ``domain``'s rows."""
        i = self._index(domain)
        g = self.gram
        return self._cos(g[:, 2 * i, 2 * i + 1], g[:, 2 * i, 2 * i], g[:, 2 * i + 1, 2 * i + 1])

    def global_noise_floor(self, domain: str) -> float:
        i = self._index(domain)
        g = self.gram.sum(0)
        return float(self._cos(g[2 * i, 2 * i + 1], g[2 * i, 2 * i], g[2 * i + 1, 2 * i + 1]))

    def _denoised(self, g: torch.Tensor, a: str, b: str) -> torch.Tensor:
        i, j = self._index(a), self._index(b)
        cross = g[..., 2 * i : 2 * i + 2, 2 * j : 2 * j + 2].mean(dim=(-2, -1))
        self_a, self_b = g[..., 2 * i, 2 * i + 1], g[..., 2 * j, 2 * j + 1]
        ok = (self_a > 0) & (self_b > 0)
        return torch.where(ok, cross / (self_a.clamp_min(0) * self_b.clamp_min(0)).sqrt(), math.nan)

    def denoised_cosine(self, a: str, b: str) -> torch.Tensor:
        """Per-module ``mean_ij(a_i·b_j) / sqrt((a_1·a_2)(b_1·b_2))`` (:mod:`mgs_tools.diagnose`); NaN where undefined."""
        return self._denoised(self.gram, a, b)

    def global_denoised_cosine(self, a: str, b: str) -> float:
        return float(self._denoised(self.gram.sum(0), a, b))

    def grad_norm(self, domain: str) -> torch.Tensor:
        """Per-module norm of ``domain``'s gradient."""
        i = self._index(domain)
        return self._full(self.gram)[:, i, i].clamp_min(0).sqrt()

    def pairs(self) -> list[tuple[str, str]]:
        return [(a, b) for n, a in enumerate(self.domains) for b in self.domains[n + 1 :]]

    # -- outputs ---------------------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        """The JSON document written by the command line (schema in docs/diagnose.md); NaN → null."""

        def num(x: float) -> float | None:
            return None if math.isnan(x) else round(x, 6)

        def nums(t: torch.Tensor) -> list[float | None]:
            return [num(float(x)) for x in t]

        return {
            "model": self.model,
            "domains": list(self.domains),
            "rows": dict(self.rows),
            "tokens": dict(self.tokens),
            "modules": [
                {"name": m.name, "layer": m.layer, "kind": m.kind, "family": m.family, "numel": m.numel}
                for m in self.modules
            ],
            "pairs": {
                f"{a}|{b}": {
                    "global_cosine": num(self.global_cosine(a, b)),
                    "conflict_frac": num(self.conflict_frac(a, b)),
                    "global_denoised_cosine": num(self.global_denoised_cosine(a, b)),
                    "cosine": nums(self.cosine(a, b)),
                    "denoised_cosine": nums(self.denoised_cosine(a, b)),
                }
                for a, b in self.pairs()
            },
            "noise_floor": {
                d: {"global_cosine": num(self.global_noise_floor(d)), "cosine": nums(self.noise_floor(d))}
                for d in self.domains
            },
            "grad_norm": {
                d: {"global": num(float(self.grad_norm(d).square().sum().sqrt())), "module": nums(self.grad_norm(d))}
                for d in self.domains
            },
            "settings": dict(self.settings),
        }

    def table(self, per_module: bool = False) -> str:
        """The terminal report: per pair and per domain summaries, then cosines by module kind."""
        return _report.table(self, per_module)

    def heatmap(self, path: str | os.PathLike) -> None:
        """Write :meth:`heatmap_figure` as a PNG."""
        _report.heatmap(self, path)

    def heatmap_figure(self) -> Any:
        """The heatmap as a matplotlib ``Figure``: a per-kind summary on top, then one panel per domain pair and one
        noise-floor panel per domain (layers × module kinds), cell values only where they fit
        (:func:`mgs_tools.diagnose._report.heatmap_figure`). Uses matplotlib's object API (no pyplot), so it never
        changes the caller's backend."""
        return _report.heatmap_figure(self)

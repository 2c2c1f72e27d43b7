"""Independent references for the core tests: a tiny Llama-shaped model and a plain, slow PCGrad.

The reference loops over groups and domains in float64 and projects vectors, exactly as the paper
states PCGrad; it shares nothing with mgs except the random projection orders (which are part of
the specification: a private generator seeded by (seed, step)).
"""

from __future__ import annotations

import torch
from torch import nn

from pcgrad_reference import reference_pcgrad

from mgs.methods import pcgrad_orders, step_generator


class TinyLlama(nn.Module):
    """Hugging Face-like names (model.layers.N.self_attn.q_proj ...) with a cheap forward."""

    def __init__(self, vocab: int = 32, hidden: int = 8, inter: int = 12, layers: int = 2, tie: bool = False):
        super().__init__()
        self.model = nn.Module()
        self.model.embed_tokens = nn.Embedding(vocab, hidden)
        self.model.layers = nn.ModuleList()
        for _ in range(layers):
            layer = nn.Module()
            layer.input_layernorm = nn.LayerNorm(hidden)
            layer.self_attn = nn.Module()
            for name in ("q_proj", "k_proj", "v_proj"):
                setattr(layer.self_attn, name, nn.Linear(hidden, hidden, bias=True))
            layer.self_attn.o_proj = nn.Linear(hidden, hidden, bias=False)
            layer.post_attention_layernorm = nn.LayerNorm(hidden)
            layer.mlp = nn.Module()
            layer.mlp.gate_proj = nn.Linear(hidden, inter, bias=False)
            layer.mlp.up_proj = nn.Linear(hidden, inter, bias=False)
            layer.mlp.down_proj = nn.Linear(inter, hidden, bias=False)
            self.model.layers.append(layer)
        self.model.norm = nn.LayerNorm(hidden)
        self.lm_head = nn.Linear(hidden, vocab, bias=False)
        if tie:
            self.lm_head.weight = self.model.embed_tokens.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.model.embed_tokens(ids)
        for layer in self.model.layers:
            h = layer.input_layernorm(x)
            a = layer.self_attn
            x = x + a.o_proj(a.v_proj(h) * torch.sigmoid(a.q_proj(h) + a.k_proj(h)))
            h = layer.post_attention_layernorm(x)
            m = layer.mlp
            x = x + m.down_proj(nn.functional.silu(m.gate_proj(h)) * m.up_proj(h))
        return self.lm_head(self.model.norm(x))


def named_params(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def synthetic_grads(
    params: dict[str, torch.Tensor], k: int, seed: int, groups: list[list[str]], min_abs_cos: float = 1e-3
) -> dict[str, list[torch.Tensor]]:
    """Per parameter, K float64 gradients with conflicts, whose cosines in every group (and over the whole
    model) are at least ``min_abs_cos`` away from zero, so float32 rounding cannot flip a PCGrad branch."""
    for attempt in range(100):
        gen = torch.Generator().manual_seed(seed * 1000 + attempt)
        grads = {}
        for name, p in params.items():
            base = torch.randn(p.shape, generator=gen, dtype=torch.float64)
            signs = torch.randint(0, 2, (k,), generator=gen) * 2 - 1
            scales = torch.rand(k, generator=gen, dtype=torch.float64) * 3 + 0.1  # unequal magnitudes
            grads[name] = [
                scales[d] * (signs[d] * base + 0.7 * torch.randn(p.shape, generator=gen, dtype=torch.float64))
                for d in range(k)
            ]
        if all(_min_abs_cos(grads, names, k) >= min_abs_cos for names in groups + [list(params)]):
            return grads
    raise AssertionError("could not draw gradients with cosines away from zero")


def _min_abs_cos(grads, names, k) -> float:
    flat = [torch.cat([grads[n][d].flatten() for n in names]) for d in range(k)]
    worst = 1.0
    for i in range(k):
        for j in range(i + 1, k):
            worst = min(worst, abs(float(flat[i] @ flat[j] / (flat[i].norm() * flat[j].norm()))))
    return worst


def reference_surgery(
    grads: dict[str, list[torch.Tensor]], groups: dict[str, list[str]], surgery: str, seed: int, step: int
) -> dict[str, torch.Tensor]:
    """The expected p.grad of every parameter, in float64."""
    k = len(next(iter(grads.values())))
    if surgery == "none":
        return {n: sum(g) for n, g in grads.items()}
    group_lists = [sum(groups.values(), [])] if surgery == "global" else list(groups.values())
    orders = pcgrad_orders(len(group_lists), k, step_generator(seed, step))
    out = {}
    for m, names in enumerate(group_lists):
        vectors = [torch.cat([grads[n][d].flatten() for n in names]) for d in range(k)]
        combined, _ = reference_pcgrad(vectors, orders[m])
        offset = 0
        for n in names:
            size = grads[n][0].numel()
            out[n] = combined[offset : offset + size].view(grads[n][0].shape)
            offset += size
    return out


def feed(surgery, params: dict[str, torch.Tensor], grads: dict[str, list[torch.Tensor]], domains: list[str]) -> None:
    """Run one backward per domain whose gradient is exactly ``grads[name][d]``."""
    for d, domain in enumerate(domains):
        with surgery.domain(domain):
            loss = sum((p * grads[n][d].to(p.dtype)).sum() for n, p in params.items())
            loss.backward()


def max_group_error(params, expected, groups: dict[str, list[str]]) -> float:
    """max over groups of ‖p.grad − expected‖ / ‖expected‖ (float64)."""
    worst = 0.0
    for names in groups.values():
        got = torch.cat([params[n].grad.double().flatten() for n in names])
        ref = torch.cat([expected[n].flatten() for n in names])
        worst = max(worst, float((got - ref).norm() / ref.norm().clamp_min(1e-300)))
    return worst

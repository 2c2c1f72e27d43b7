"""mgs.integration.normalize_by_domain against torch.std(correction=0) per domain, and its input errors."""

import pytest
import torch

from mgs.integration import domain_advantage_std, normalize_by_domain


def test_matches_population_std_per_domain():
    g = torch.Generator().manual_seed(0)
    ids = torch.tensor([0, 2, 2, 0, 1, 2, 0, 0, 2])
    advantages = torch.randn(9, generator=g) * torch.tensor([1.0, 5, 5, 1, 0, 5, 1, 1, 5])  # domain 1: all zero
    normalized, std = normalize_by_domain(advantages, ids, 4)  # domain 3: no rows
    for d in range(3):
        rows = advantages[ids == d]
        assert std[d] == pytest.approx(float(rows.std(correction=0)), rel=1e-6)  # ours in float64
        torch.testing.assert_close(normalized[ids == d], rows / (rows.std(correction=0) + 1e-4))
    assert std[3] == 0 and normalized.dtype == advantages.dtype
    assert torch.equal(normalized[ids == 1], torch.zeros(1))


def test_errors():
    with pytest.raises(ValueError, match="one advantage and one domain id per row"):
        domain_advantage_std(torch.zeros(3, 2), torch.zeros(3, dtype=torch.long), 2)
    with pytest.raises(ValueError, match="one advantage and one domain id per row"):
        domain_advantage_std(torch.zeros(3), torch.zeros(2, dtype=torch.long), 2)
    with pytest.raises(ValueError, match=r"domain ids must lie in \[0, 2\)"):
        domain_advantage_std(torch.zeros(2), torch.tensor([0, 2]), 2)

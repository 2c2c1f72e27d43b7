"""The integration layer: what every framework adapter needs besides the surgery itself (torch only).

- :mod:`mgs.integration.settings`: one declaration of every surgery setting (name, default, help,
  choices) and the one mapping from an adapter's config to :class:`mgs.SurgeryOptions`;
- :mod:`mgs.integration.domains`: :class:`DomainIndex`, which reads a row's domain (a field or a
  dotted path), checks it against the domain list and words every domain error;
- :mod:`mgs.integration.metrics`: the statistics as host floats in one copy, and the per-domain
  metric names both adapters log;
- :mod:`mgs.integration.state`: saving and loading the surgery state in a checkpoint folder (one file
  name scheme, one policy for a missing file);
- :mod:`mgs.integration.upstream`: checks, at import, of the upstream versions and of every private
  upstream member an adapter overrides or reads;
- :mod:`mgs.integration.advantage`: per-domain advantage normalisation (the paper's Normalized Advantage
  baseline), the same arithmetic for every adapter.

A third framework adapter uses these and adds only the translation of its batches and configs
(docs/architecture.md).
"""

from mgs.integration.advantage import domain_advantage_std, normalize_by_domain
from mgs.integration.domains import DomainIndex
from mgs.integration.metrics import DOMAIN_METRICS, domain_metric, domain_moments, domain_summary, scalar_metrics
from mgs.integration.settings import SETTINGS, Setting, SurgerySettings, setting_field, settings_doc, surgery_options
from mgs.integration.state import STATE_FILE, load_surgery_state, save_surgery_state
from mgs.integration.upstream import Seam, UpstreamMismatchError, check_instance, check_upstream

__all__ = [
    "DOMAIN_METRICS",
    "DomainIndex",
    "SETTINGS",
    "STATE_FILE",
    "Seam",
    "Setting",
    "SurgerySettings",
    "UpstreamMismatchError",
    "check_instance",
    "check_upstream",
    "domain_advantage_std",
    "domain_metric",
    "domain_moments",
    "domain_summary",
    "load_surgery_state",
    "normalize_by_domain",
    "save_surgery_state",
    "scalar_metrics",
    "setting_field",
    "settings_doc",
    "surgery_options",
]

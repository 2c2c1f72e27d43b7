"""TRL adapter: ``MGSGRPOTrainer`` + ``MGSGRPOConfig``, a drop-in for ``GRPOTrainer`` on multi-domain data, and
the mixed multi-domain dataset it reads (:mod:`trl_mgs.data`)."""

from trl_mgs.config import MGSGRPOConfig
from trl_mgs.data import check_trl_compatible, interleave_domains, mixture_dataset
from trl_mgs.trainer import MGSGRPOTrainer

__all__ = ["MGSGRPOConfig", "MGSGRPOTrainer", "check_trl_compatible", "interleave_domains", "mixture_dataset"]

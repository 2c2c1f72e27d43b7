"""TRL adapter: ``MGSGRPOTrainer`` + ``MGSGRPOConfig``, a drop-in for ``GRPOTrainer`` on multi-domain data."""

from trl_mgs.config import MGSGRPOConfig
from trl_mgs.trainer import MGSGRPOTrainer

__all__ = ["MGSGRPOConfig", "MGSGRPOTrainer"]

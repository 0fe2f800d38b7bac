"""The attacker's side: countermeasures (``COUNTERMEASURES``) and the unauthorized fine-tuning."""
from .base import COUNTERMEASURES, Transform
from .finetune import FineTune, FineTuneResult
from .jpeg import JPEG

__all__ = ["COUNTERMEASURES", "Transform", "JPEG", "FineTune", "FineTuneResult"]

"""Defenses (data protections). Registry: ``DEFENSES``."""
from .base import DEFENSES, Defense, DefenseConfig, Proposal, Protection, enforce_budget
from .emn import EMN
from .mem import MEM
from .mmguard import MMGUARD_VARIANTS, MMGuard
from .minmin import MinMinConfig, MinMinDefense, MinMinRun, Perturbation
from .random_noise import RandomNoise
from .random_trigger import RandomTrigger
from .rem import REM
from .tue import TUE

__all__ = ["DEFENSES", "Defense", "DefenseConfig", "Proposal", "Protection", "enforce_budget", "EMN", "TUE", "REM", "MEM",
           "RandomNoise", "RandomTrigger", "MMGuard", "MMGUARD_VARIANTS", "MinMinDefense", "MinMinConfig", "MinMinRun", "Perturbation"]

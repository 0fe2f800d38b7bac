"""Defenses (data protections). Registry: ``DEFENSES``."""
from .base import DEFENSES, Defense, DefenseConfig, Protection, enforce_budget
from .emn import EMN
from .random_noise import RandomNoise

__all__ = ["DEFENSES", "Defense", "DefenseConfig", "Protection", "enforce_budget", "EMN", "RandomNoise"]

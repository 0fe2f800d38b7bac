"""The ``SURROGATES`` registry (family name -> adapter class)."""
from ..registry import Registry

SURROGATES: Registry = Registry("surrogate")

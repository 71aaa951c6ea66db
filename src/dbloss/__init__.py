"""dbloss: Distribution-Balanced loss and tools for long-tailed multi-label classification."""

__version__ = "0.1.0"

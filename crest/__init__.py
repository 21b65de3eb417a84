"""crest: compression sweeps for neural networks.

Importing ``crest`` is cheap: the heavy parts (Ray, Optuna, SQLAlchemy, torch) load only
when a subpackage that needs them is imported.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]

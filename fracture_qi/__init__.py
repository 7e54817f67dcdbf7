"""fracture-qi: audit and quality improvement for CT-based vertebral fracture screening.

The package holds all logic; notebooks and Voila apps are thin front ends over it.
torch is imported only inside :mod:`fracture_qi.screening`.
"""

from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.1.0"

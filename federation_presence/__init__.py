"""federation-presence: a Matrix federation presence worker.

The package is split along one seam: ``presence/`` and the ``*.py`` files that
say "pure" in their docstring decide; everything else does I/O.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]

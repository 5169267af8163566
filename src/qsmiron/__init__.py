"""qsmiron: brain-iron studies in multiple sclerosis, from multi-echo GRE to regression tables.

The package is organised as a one-way flow of rooms::

    io -> recon -> anatomy -> measure -> stats -> report
                 cohort (runs the first four per subject)
    simulate (realistic inputs with known truth)
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("qsmiron")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]

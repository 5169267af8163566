"""qsmiron.io."""

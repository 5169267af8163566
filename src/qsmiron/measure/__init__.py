"""qsmiron.measure."""

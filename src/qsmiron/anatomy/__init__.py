"""qsmiron.anatomy."""

"""qsmiron.simulate."""

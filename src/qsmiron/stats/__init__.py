"""qsmiron.stats."""

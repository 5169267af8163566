"""qsmiron.report."""

"""qsmiron.recon."""

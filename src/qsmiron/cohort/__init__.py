"""qsmiron.cohort."""

"""spectral package."""

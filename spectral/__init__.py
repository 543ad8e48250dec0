"""qclip.spectral: the spectral math — singular spectra and their statistics (stable/effective rank, entropy,
power-law alpha), per-rank SQNR of features in a reference basis, rank bands, 2D Fourier profiles of feature
maps, and differentiable spectral penalties. Pure tensor functions: imports nothing else from qclip.
"""

"""cVAE precipitation downscaling (seed 002)."""

"""Sequential object pointing (seed 004)."""

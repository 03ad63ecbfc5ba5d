"""3D surface segmentation (seed 003)."""

"""Float64 SciPy re-derivations shared by the segmentation-loss and surface-task tests.

Importable from any test module: pyproject.toml puts `tests/` on pytest's `pythonpath`.
"""

import numpy as np
from scipy import ndimage


def signed_distance(labels) -> np.ndarray:
    """`edt(1 - mask) - edt(mask)` per example of `[batch, *spatial]` labels (0 without a boundary).

    scipy's edt gives each nonzero voxel its distance to the nearest zero voxel, so
    `edt(1 - mask)` is the distance of background to foreground and `edt(mask)` that of
    foreground to background.
    """
    maps = []
    for mask in np.asarray(labels) > 0.5:
        if mask.all() or not mask.any():
            maps.append(np.zeros(mask.shape))
        else:
            maps.append(
                ndimage.distance_transform_edt(~mask) - ndimage.distance_transform_edt(mask)
            )
    return np.stack(maps)


def soft_skeleton(probs, iterations: int) -> np.ndarray:
    """Soft skeleton of `[batch, *spatial]` maps by grey morphology (cross erosion, cube dilation).

    mode="nearest" repeats the edge voxel, which is already inside every 3-wide window at
    the edge, so it equals ignoring outside voxels.
    """
    x = np.asarray(probs, np.float64)
    rank = x.ndim - 1
    cross = ndimage.generate_binary_structure(rank, 1)
    cube = np.ones((3,) * rank, bool)

    def erode(v):
        return np.stack([ndimage.grey_erosion(e, footprint=cross, mode="nearest") for e in v])

    def opening(v):
        eroded = erode(v)
        return np.stack([ndimage.grey_dilation(e, footprint=cube, mode="nearest") for e in eroded])

    skeleton = np.maximum(x - opening(x), 0)
    for _ in range(iterations):
        x = erode(x)
        delta = np.maximum(x - opening(x), 0)
        skeleton = skeleton + np.maximum(delta - skeleton * delta, 0)
    return skeleton

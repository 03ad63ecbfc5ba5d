"""Pure-function losses for the four jaxguard tasks and the combinator that composes them.

Elementwise losses return per-element values and batch-statistic losses return
scalars; each docstring states its shapes and reduction. Where optax already has
a loss (Huber, L2, sigmoid cross-entropy, dice, focal) jaxguard uses or wraps it.
"""

from jaxguard.losses._classification import pos_weight_from_rate as pos_weight_from_rate
from jaxguard.losses._classification import (
    weighted_sigmoid_binary_cross_entropy as weighted_sigmoid_binary_cross_entropy,
)
from jaxguard.losses._compose import CompositeLoss as CompositeLoss
from jaxguard.losses._compose import Term as Term
from jaxguard.losses._compose import compose as compose
from jaxguard.losses._extremes import coarsen as coarsen
from jaxguard.losses._extremes import extreme_mae as extreme_mae
from jaxguard.losses._extremes import extreme_weighted_mae as extreme_weighted_mae
from jaxguard.losses._extremes import mass_conservation as mass_conservation
from jaxguard.losses._into import value_and_grad_into as value_and_grad_into
from jaxguard.losses._pointing import distance_hinge as distance_hinge
from jaxguard.losses._pointing import split_distance as split_distance
from jaxguard.losses._regression import absolute_error as absolute_error
from jaxguard.losses._regression import negative_variance as negative_variance
from jaxguard.losses._regression import overweight_high_targets as overweight_high_targets
from jaxguard.losses._regression import pinball_loss as pinball_loss
from jaxguard.losses._regression import r2_penalty as r2_penalty
from jaxguard.losses._regression import std_gap as std_gap
from jaxguard.losses._regression import variance_penalty as variance_penalty
from jaxguard.losses._regression import (
    variance_preserving_mse as variance_preserving_mse,
)
from jaxguard.losses._scoring import crps_ensemble as crps_ensemble
from jaxguard.losses._scoring import crps_terms as crps_terms
from jaxguard.losses._scoring import energy_score as energy_score
from jaxguard.losses._segmentation import binary_class_weight_map as binary_class_weight_map
from jaxguard.losses._segmentation import boundary_loss as boundary_loss
from jaxguard.losses._segmentation import class_weights as class_weights
from jaxguard.losses._segmentation import connectivity_loss as connectivity_loss
from jaxguard.losses._segmentation import sigmoid_focal_loss as sigmoid_focal_loss
from jaxguard.losses._segmentation import signed_distance_map as signed_distance_map
from jaxguard.losses._segmentation import soft_cldice_loss as soft_cldice_loss
from jaxguard.losses._segmentation import soft_dice_loss as soft_dice_loss
from jaxguard.losses._segmentation import soft_skeleton as soft_skeleton
from jaxguard.losses._vae import beta_warmup as beta_warmup
from jaxguard.losses._vae import gaussian_kl as gaussian_kl
from jaxguard.losses._vae import gaussian_kl_per_dim as gaussian_kl_per_dim

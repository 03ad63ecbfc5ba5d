"""PyTorch twins of the optical-depth and surface models, losses and optimizers.

Used by `python -m benchmarks.train_step --compare torch` to time the same train step in
PyTorch. This module imports torch at the top: import it only where torch is installed
(`benchmarks.train_step` imports it lazily and notes its absence).

Each twin mirrors the Flax module layer for layer, in PyTorch's channels-first layout:

* optical depth (`jaxguard/tasks/optical_depth/model.py`): 3x3 'SAME' convolutions with
  tanh-approximated GELU (flax's `nnx.gelu` default), 2x2 average pools, spatial mean,
  two-layer MLP; per scale a stride-1 temporal average pool, pre-norm residual
  self-attention (LayerNorm eps 1e-6 as flax's; `nn.MultiheadAttention` holds the same
  query/key/value/out kernels and biases as `nnx.MultiHeadAttention`), time mean; GELU
  MLP layer, dropout, linear head.
* surface (`jaxguard/tasks/surface/model.py`): the 3D UNet (two 3x3x3 convolutions per
  block, GroupNorm eps 1e-6 as flax's, GELU; 2x max pool; 2x2x2 stride-2 transposed
  convolutions; concatenation [upsampled, skip]; bottleneck dropout; 1x1x1 head) and the
  training-time patch augmentation (per-example flips, quarter turns, intensity jitter),
  vectorised the way `jax.vmap` runs it.

The losses are the task's composite terms with the config's weights, written idiomatically
in PyTorch; the optimizer is `torch.optim.AdamW` after `clip_grad_norm_` with the config's
warm-up + cosine schedule, as `jaxguard.optim.build_optimizer`'s optax chain. `load_params`
copies a jaxguard model's parameters (`nnx.to_pure_dict` of its `nnx.Param` state) into a
twin, so a forward pass and a loss can be compared number for number.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from ml_collections import ConfigDict
from torch import nn

# flax's LayerNorm and GroupNorm epsilon (torch's default is 1e-5).
FLAX_NORM_EPSILON = 1e-6


def gelu(x: torch.Tensor) -> torch.Tensor:
    """`jax.nn.gelu`'s default: the tanh approximation."""
    return F.gelu(x, approximate="tanh")


# ------------------------------------------------------------------------------ optical depth


class FrameEncoder(nn.Module):
    """Per-frame encoder `[N, C, H, W] -> [N, features]` (H and W even at every pool)."""

    def __init__(self, *, channels: int, features: int, conv_features):
        super().__init__()
        widths = (channels, *conv_features)
        self.convs = nn.ModuleList(
            nn.Conv2d(w_in, w_out, kernel_size=3, padding=1)
            for w_in, w_out in zip(widths[:-1], widths[1:], strict=True)
        )
        self.project = nn.Linear(widths[-1], features)
        self.mix = nn.Linear(features, features)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images
        for index, conv in enumerate(self.convs):
            if index > 0:
                x = F.avg_pool2d(x, 2)
            x = gelu(conv(x))
        return self.mix(gelu(self.project(x.mean(dim=(2, 3)))))


class TemporalAttention(nn.Module):
    """Stride-1 time pooling, pre-norm residual self-attention, time mean: `[B, T, F] -> [B, F]`."""

    def __init__(self, *, window: int, features: int, num_heads: int):
        super().__init__()
        self.window = window
        self.norm = nn.LayerNorm(features, eps=FLAX_NORM_EPSILON)
        self.attention = nn.MultiheadAttention(features, num_heads, batch_first=True)

    def forward(self, sequence: torch.Tensor) -> torch.Tensor:
        pooled = F.avg_pool1d(sequence.transpose(1, 2), self.window, stride=1).transpose(1, 2)
        normed = self.norm(pooled)
        attended = pooled + self.attention(normed, normed, normed, need_weights=False)[0]
        return attended.mean(dim=1)


class OpticalDepthRegressor(nn.Module):
    """Frames `[batch, T, H, W, C]` (jaxguard's layout) -> predictions `[batch]`."""

    def __init__(
        self,
        *,
        channels: int,
        features: int,
        conv_features,
        attention_scales,
        num_heads: int,
        dropout: float,
    ):
        super().__init__()
        self.encoder = FrameEncoder(
            channels=channels, features=features, conv_features=conv_features
        )
        self.temporal = nn.ModuleList(
            TemporalAttention(window=s, features=features, num_heads=num_heads)
            for s in attention_scales
        )
        self.hidden = nn.Linear(features * len(attention_scales), features)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(features, 1)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        batch, length, height, width, channels = frames.shape
        images = frames.reshape(batch * length, height, width, channels).permute(0, 3, 1, 2)
        sequence = self.encoder(images).reshape(batch, length, -1)
        summary = torch.cat([block(sequence) for block in self.temporal], dim=-1)
        hidden = self.dropout(gelu(self.hidden(summary)))
        return self.head(hidden)[..., 0]


def optical_depth_model(config: ConfigDict) -> OpticalDepthRegressor:
    m = config.model
    return OpticalDepthRegressor(
        channels=1,
        features=m.features,
        conv_features=tuple(m.conv_features),
        attention_scales=tuple(m.attention_scales),
        num_heads=m.num_heads,
        dropout=m.dropout,
    )


def optical_depth_loss(config: ConfigDict):
    """`loss(pred, batch) -> total`: the task's composite at the config's weights.

    Terms as `jaxguard/tasks/optical_depth/loss.py`: the base error (`mse` or `mae`) averaged
    with the batch's per-example `weight`, the variance penalty, the R² penalty, the std
    gap and the diversity term, each where its weight is > 0.
    """
    cfg = config.loss
    unsupported = [key for key in ("r2_weight", "std_gap_weight") if cfg[key] > 0]
    if unsupported:
        raise NotImplementedError(f"torch twin: loss terms {unsupported} are not mirrored")

    def loss(pred: torch.Tensor, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        target, weight = batch["target"], batch["weight"]
        error = (pred - target) ** 2 if cfg.base == "mse" else (pred - target).abs()
        total = cfg.base_weight * (weight * error).sum() / weight.sum().clamp_min(1e-12)
        if cfg.variance_weight > 0:
            target_var = target.var(correction=0)
            usable = target_var > 1e-12
            ratio = pred.var(correction=0) / torch.where(usable, target_var, 1.0)
            penalty = torch.where(usable, (1.0 - ratio) ** 2, 0.0)
            total = total + cfg.variance_weight * penalty
        if cfg.diversity_weight > 0:
            total = total - cfg.diversity_weight * pred.var(correction=0)
        return total

    return loss


# ------------------------------------------------------------------------------------ surface


def _normalisation(norm: str, features: int, groups: int) -> nn.Module:
    if norm == "group":
        return nn.GroupNorm(min(groups, features), features, eps=FLAX_NORM_EPSILON)
    if norm == "batch":
        # flax: epsilon 1e-5, running average momentum 0.99 (torch counts 1 - that).
        return nn.BatchNorm3d(features, eps=1e-5, momentum=0.01)
    return nn.Identity()


class ConvBlock(nn.Module):
    """Two 3x3x3 convolutions, each followed by the normalisation and a GELU."""

    def __init__(self, in_features: int, features: int, *, norm: str, groups: int):
        super().__init__()
        self.convs = nn.ModuleList(
            [
                nn.Conv3d(in_features, features, kernel_size=3, padding=1),
                nn.Conv3d(features, features, kernel_size=3, padding=1),
            ]
        )
        self.norms = nn.ModuleList(_normalisation(norm, features, groups) for _ in range(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv, norm in zip(self.convs, self.norms, strict=True):
            x = gelu(norm(conv(x)))
        return x


class UNet3D(nn.Module):
    """Volumes `[batch, D, H, W]` -> foreground logits `[batch, D, H, W]`."""

    def __init__(self, *, initial_filters: int, depth: int, norm: str, norm_groups: int, dropout):
        super().__init__()
        widths = [initial_filters * 2**level for level in range(depth + 1)]
        block = dict(norm=norm, groups=norm_groups)
        self.encoder = nn.ModuleList(
            ConvBlock(w_in, w, **block)
            for w_in, w in zip([1, *widths[:-2]], widths[:-1], strict=True)
        )
        self.bottleneck = ConvBlock(widths[-2], widths[-1], **block)
        self.dropout = nn.Dropout(dropout)
        self.upsample = nn.ModuleList(
            nn.ConvTranspose3d(widths[level + 1], widths[level], kernel_size=2, stride=2)
            for level in reversed(range(depth))
        )
        self.decoder = nn.ModuleList(
            ConvBlock(2 * widths[level], widths[level], **block) for level in reversed(range(depth))
        )
        self.head = nn.Conv3d(widths[0], 1, kernel_size=1)

    def forward(self, volume: torch.Tensor) -> torch.Tensor:
        x = volume[:, None]
        skips = []
        for block in self.encoder:
            x = block(x)
            skips.append(x)
            x = F.max_pool3d(x, 2)
        x = self.dropout(self.bottleneck(x))
        for upsample, block, skip in zip(self.upsample, self.decoder, reversed(skips), strict=True):
            x = block(torch.cat([upsample(x), skip], dim=1))
        return self.head(x)[:, 0]


class PatchAugment(nn.Module):
    """Per-example random flips, (H, W) quarter turns and intensity jitter, training mode only.

    Vectorised as `jax.vmap` runs jaxguard's `PatchAugment`: flips as selects between the
    array and its flip, the quarter turn as a pick among the four rotations.
    """

    def __init__(self, *, flips: bool, rotations: bool, intensity_jitter: float):
        super().__init__()
        self.flips = flips
        self.rotations = rotations
        self.intensity_jitter = intensity_jitter

    def forward(self, arrays: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if not self.training:
            return dict(arrays)
        volume = arrays["volume"]
        batch, device = volume.shape[0], volume.device
        flip = torch.rand(batch, 3, device=device) < 0.5
        turns = torch.randint(0, 4, (batch,), device=device)
        scale, shift = (self.intensity_jitter * torch.randn(batch, 2, device=device)).unbind(1)
        examples = torch.arange(batch, device=device)
        out = {}
        for name, x in arrays.items():
            if self.flips:
                for axis in range(3):
                    x = torch.where(flip[:, axis, None, None, None], x.flip(axis + 1), x)
            if self.rotations:
                x = torch.stack([torch.rot90(x, k, dims=(2, 3)) for k in range(4)])[turns, examples]
            if name == "volume":
                x = x * (1.0 + scale[:, None, None, None]) + shift[:, None, None, None]
            out[name] = x
        return out


class SurfaceSegmenter(nn.Module):
    """`augment` (training mode only) and the `unet`, as jaxguard's `SurfaceSegmenter`."""

    def __init__(self, *, unet: UNet3D, augment: PatchAugment):
        super().__init__()
        self.unet = unet
        self.augment = augment

    def forward(self, volume: torch.Tensor) -> torch.Tensor:
        return self.unet(volume)


def surface_model(config: ConfigDict) -> SurfaceSegmenter:
    m, d = config.model, config.data
    unet = UNet3D(
        initial_filters=m.initial_filters,
        depth=m.depth,
        norm=m.norm,
        norm_groups=m.norm_groups,
        dropout=m.dropout,
    )
    augment = PatchAugment(
        flips=d.augment_flips, rotations=d.augment_rotations, intensity_jitter=d.intensity_jitter
    )
    return SurfaceSegmenter(unet=unet, augment=augment)


def surface_forward(model: SurfaceSegmenter, batch: Mapping[str, torch.Tensor]) -> dict:
    """As the task's `forward`: logits of the (augmented) view and its labels and maps."""
    view = model.augment({key: batch[key] for key in ("volume", "labels", "signed_distance")})
    return {"logits": model(view["volume"]), **view}


def _soft_erode(x: torch.Tensor) -> torch.Tensor:
    """Min over the cross-shaped neighbourhood; max pools of -x pad with -inf (never win)."""
    x = x[:, None]
    eroded = -torch.max(
        torch.stack(
            [
                F.max_pool3d(-x, (3, 1, 1), stride=1, padding=(1, 0, 0)),
                F.max_pool3d(-x, (1, 3, 1), stride=1, padding=(0, 1, 0)),
                F.max_pool3d(-x, (1, 1, 3), stride=1, padding=(0, 0, 1)),
            ]
        ),
        dim=0,
    ).values
    return torch.minimum(x, eroded)[:, 0]


def _soft_dilate(x: torch.Tensor) -> torch.Tensor:
    return F.max_pool3d(x[:, None], 3, stride=1, padding=1)[:, 0]


def soft_skeleton(probs: torch.Tensor, iterations: int) -> torch.Tensor:
    """clDice's soft skeleton (Shit et al. 2021), as `jaxguard.losses.soft_skeleton`."""
    eroded = _soft_erode(probs)
    skeleton = F.relu(probs - _soft_dilate(eroded))
    shape = eroded
    for _ in range(iterations):
        eroded = _soft_erode(shape)
        delta = F.relu(shape - _soft_dilate(eroded))
        skeleton = skeleton + F.relu(delta - skeleton * delta)
        shape = eroded
    return skeleton


def surface_loss(config: ConfigDict, alpha: float, class_weights):
    """`loss(outputs) -> total`: dice, focal, boundary, clDice and connectivity as the task's.

    `alpha` and `class_weights` (`[2]` or None) are the focal term's settings from
    `jaxguard.tasks.surface.loss.focal_settings`. Each term is a per-example value (focal:
    per-voxel) averaged over the batch and weighed by `config.loss.<name>_weight`.
    """
    cfg = config.loss
    weights = None if class_weights is None else torch.tensor(np.array(class_weights, np.float32))
    axes = (1, 2, 3)

    def loss(outputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        logits, labels = outputs["logits"], outputs["labels"]
        probs = torch.sigmoid(logits)
        total = logits.new_zeros(())
        if cfg.dice_weight > 0:
            overlap = (probs * labels).sum(axes)
            dice = 1.0 - (2.0 * overlap + cfg.dice_smooth) / (
                probs.sum(axes) + labels.sum(axes) + cfg.dice_smooth
            )
            total = total + cfg.dice_weight * dice.mean()
        if cfg.focal_weight > 0:
            cross_entropy = F.binary_cross_entropy_with_logits(logits, labels, reduction="none")
            p_t = probs * labels + (1.0 - probs) * (1.0 - labels)
            focal = cross_entropy * (1.0 - p_t) ** cfg.focal_gamma
            if alpha is not None:
                focal = (alpha * labels + (1.0 - alpha) * (1.0 - labels)) * focal
            if weights is not None:
                focal = focal * (weights[1] * labels + weights[0] * (1.0 - labels))
            total = total + cfg.focal_weight * focal.mean()
        if cfg.boundary_weight > 0:
            boundary = (probs * outputs["signed_distance"].detach()).mean()
            total = total + cfg.boundary_weight * boundary
        if cfg.cldice_weight > 0:
            skeleton_pred = soft_skeleton(probs, cfg.cldice_iterations)
            skeleton_true = soft_skeleton(labels, cfg.cldice_iterations)
            smooth = cfg.cldice_smooth
            precision = ((skeleton_pred * labels).sum(axes) + smooth) / (
                skeleton_pred.sum(axes) + smooth
            )
            sensitivity = ((skeleton_true * probs).sum(axes) + smooth) / (
                skeleton_true.sum(axes) + smooth
            )
            cldice = 1.0 - 2.0 * precision * sensitivity / (precision + sensitivity)
            total = total + cfg.cldice_weight * cldice.mean()
        if cfg.connectivity_weight > 0:
            log_p, log_q = F.logsigmoid(logits), F.logsigmoid(-logits)
            edges, summed = 0, logits.new_zeros(logits.shape[0])
            for axis in axes:
                n = logits.shape[axis]
                first, second = slice(0, n - 1), slice(1, n)

                def ends(x, axis=axis, first=first, second=second):
                    index = [slice(None)] * 4
                    index[axis] = first
                    head = x[tuple(index)]
                    index[axis] = second
                    return head, x[tuple(index)]

                (log_p_i, log_p_j), (log_q_i, log_q_j) = ends(log_p), ends(log_q)
                labels_i, labels_j = ends(labels)
                target = labels_i * labels_j
                # 1 - p_i p_j = q_i + p_i q_j: a log-sum of positives, as jaxguard's.
                log_unlinked = torch.logaddexp(log_q_i, log_p_i + log_q_j)
                cross_entropy = -(target * (log_p_i + log_p_j) + (1 - target) * log_unlinked)
                summed = summed + cross_entropy.sum(axes)
                edges += math.prod(logits.shape[1:]) // n * (n - 1)
            total = total + cfg.connectivity_weight * (summed / edges).mean()
        return total

    return loss


# ---------------------------------------------------------------------------------- optimizer


def warmup_cosine(optim: ConfigDict, steps_per_epoch: int, total_steps: int):
    """`step -> lr` of `optax.warmup_cosine_decay_schedule` as `jaxguard.optim` builds it."""
    if optim.schedule != "cosine":
        raise NotImplementedError(f"torch twin: schedule {optim.schedule!r} is not mirrored")
    warmup = int(round(optim.warmup_epochs * steps_per_epoch))
    decay_steps = max(total_steps, warmup + 1)
    peak, end = optim.lr, optim.lr * optim.final_lr_ratio

    def schedule(step: int) -> float:
        if step < warmup:
            return peak * step / warmup
        progress = min(step - warmup, decay_steps - warmup) / (decay_steps - warmup)
        return end + (peak - end) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return schedule


def make_optimizer(model: nn.Module, optim: ConfigDict, steps_per_epoch: int, total_steps: int):
    """`(AdamW, LambdaLR)` matching the config's optax chain (clip by `clip_grad_norm_`).

    optax's `adamw` and torch's `AdamW` share the defaults (betas 0.9/0.999, eps 1e-8 outside
    the square root, bias correction, decoupled weight decay on every parameter).
    """
    if optim.optimizer != "adamw" or optim.plateau.enabled:
        raise NotImplementedError("torch twin: only adamw without reduce-on-plateau is mirrored")
    schedule = warmup_cosine(optim, steps_per_epoch, total_steps)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=optim.lr, weight_decay=optim.weight_decay, foreach=True
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: schedule(step) / optim.lr)
    return optimizer, scheduler


# ------------------------------------------------------------------------ jaxguard parameters


def _tensor(array) -> torch.Tensor:
    return torch.from_numpy(np.array(array, dtype=np.float32))


def _copy(module: nn.Module, name: str, value: torch.Tensor) -> None:
    target = getattr(module, name)
    if target.shape != value.shape:
        raise ValueError(f"{module}.{name}: shape {tuple(target.shape)} != {tuple(value.shape)}")
    with torch.no_grad():
        target.copy_(value)


def _linear(module: nn.Linear, params) -> None:
    _copy(module, "weight", _tensor(params["kernel"]).T)
    _copy(module, "bias", _tensor(params["bias"]))


def _conv(module: nn.Module, params) -> None:
    """flax `[*window, in, out]` -> torch `[out, in, *window]`."""
    kernel = _tensor(params["kernel"])
    rank = kernel.ndim
    _copy(module, "weight", kernel.permute(rank - 1, rank - 2, *range(rank - 2)))
    _copy(module, "bias", _tensor(params["bias"]))


def _conv_transpose(module: nn.ConvTranspose3d, params) -> None:
    """flax `[*window, in, out]` (not flipped: `transpose_kernel=False`) -> torch `[in, out,
    *window]` flipped in space."""
    kernel = _tensor(params["kernel"]).permute(3, 4, 0, 1, 2).flip((2, 3, 4))
    _copy(module, "weight", kernel)
    _copy(module, "bias", _tensor(params["bias"]))


def _norm(module: nn.Module, params) -> None:
    _copy(module, "weight", _tensor(params["scale"]))
    _copy(module, "bias", _tensor(params["bias"]))


def _attention(module: nn.MultiheadAttention, params) -> None:
    """nnx `query/key/value` kernels `[F, heads, head_dim]`, `out` `[heads, head_dim, F]`."""
    features = module.embed_dim
    kernels = [
        _tensor(params[k]["kernel"]).reshape(features, -1).T for k in ("query", "key", "value")
    ]
    biases = [_tensor(params[k]["bias"]).reshape(-1) for k in ("query", "key", "value")]
    _copy(module, "in_proj_weight", torch.cat(kernels))
    _copy(module, "in_proj_bias", torch.cat(biases))
    out = params["out"]
    _linear(
        module.out_proj, {"kernel": np.reshape(out["kernel"], (-1, features)), "bias": out["bias"]}
    )


def _block(module: ConvBlock, params) -> None:
    for index, conv in enumerate(module.convs):
        _conv(conv, params["convs"][index])
    for index, norm in enumerate(module.norms):
        if not isinstance(norm, nn.Identity):
            _norm(norm, params["norms"][index])


def load_params(model: nn.Module, params: Mapping) -> None:
    """Copies jaxguard parameters (`nnx.to_pure_dict(params)`) into a twin, in place."""
    if isinstance(model, OpticalDepthRegressor):
        encoder = params["encoder"]
        for index, conv in enumerate(model.encoder.convs):
            _conv(conv, encoder["convs"][index])
        _linear(model.encoder.project, encoder["project"])
        _linear(model.encoder.mix, encoder["mix"])
        for index, block in enumerate(model.temporal):
            _norm(block.norm, params["temporal"][index]["norm"])
            _attention(block.attention, params["temporal"][index]["attention"])
        _linear(model.hidden, params["hidden"])
        _linear(model.head, params["head"])
    elif isinstance(model, SurfaceSegmenter):
        unet, twin = params["unet"], model.unet
        for index, block in enumerate(twin.encoder):
            _block(block, unet["encoder"][index])
        _block(twin.bottleneck, unet["bottleneck"])
        for index, upsample in enumerate(twin.upsample):
            _conv_transpose(upsample, unet["upsample"][index])
        for index, block in enumerate(twin.decoder):
            _block(block, unet["decoder"][index])
        _conv(twin.head, unet["head"])
    else:
        raise TypeError(f"load_params: no mapping for {type(model).__name__}")


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())

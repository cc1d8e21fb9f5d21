"""Pure loss functions, one per paper equation; `segdistill.methods` wires them to signals.

Shapes: logits and probabilities are [B, C, H, W], labels [B, H, W], a `valid` mask is an
optional bool [B, H, W] of the pixels that count (None: every pixel). Pixel-wise losses
average over the valid pixels of the whole batch, as `torch.nn.CrossEntropyLoss` does, so
an image with more valid pixels weighs more. A batch without a single valid pixel gives a
loss of 0 that is still connected to the graph (never NaN), so a step on unlabelled images
runs without special cases.

Teacher arguments are plain tensors: these functions do not detach them (the translator's
reconstruction loss must reach its weights); the methods detach teacher signals.
"""

from __future__ import annotations

import math
from contextlib import AbstractContextManager, nullcontext

import torch
import torch.nn.functional as F
from torch import Tensor

from segdistill.data.labels import IGNORE_INDEX

MEDIAN_SCOPES = ("image", "batch")


def _masked_mean(values: Tensor, valid: Tensor | None) -> Tensor:
    """Mean of per-pixel `values` [B, H, W] over the `valid` pixels; 0 when there are none.
    Summed in (at least) float32: a float16 sum of a crop's pixels passes 65504."""
    values = _at_least_float32(values)
    if valid is None:
        return values.mean()
    if valid.shape != values.shape:  # [B, 1, H, W] would broadcast to [B, B, H, W]
        raise ValueError(f"valid must be [B, H, W] = {list(values.shape)}, not {list(valid.shape)}")
    mask = valid.to(values.dtype)
    # clamp: an all-invalid batch gives 0 / 1 = 0 with a (zero) gradient, not 0 / 0 = NaN.
    return (values * mask).sum() / mask.sum().clamp_min(1.0)


def _same_shape(first: Tensor, second: Tensor, names: str, maps: bool = True) -> None:
    """ValueError unless the two maps compared pixel by pixel have one shape (a [B, H, W]
    against a [B, 1, H, W] map would broadcast to [B, B, H, W] and give a wrong number)
    and, for `maps`, are [B, C, H, W]: one image without its batch axis, [C, H, W], would
    be read as a batch of C maps of H rows, and give a plausible wrong number."""
    if first.shape != second.shape:
        raise ValueError(
            f"{names} must have the same shape, not {list(first.shape)} and {list(second.shape)}"
        )
    if maps and first.dim() != 4:
        raise ValueError(
            f"{names} must be [B, C, H, W] maps (one image: image[None]), not {list(first.shape)}"
        )


def _full_precision(x: Tensor) -> AbstractContextManager:
    """A context that turns autocast off: dot products over thousands of positions overflow
    float16, so the attention and affinity products run in (at least) float32."""
    if torch.is_autocast_enabled(x.device.type):
        return torch.autocast(device_type=x.device.type, enabled=False)
    return nullcontext()


def _at_least_float32(x: Tensor) -> Tensor:
    return x.float() if x.element_size() < 4 else x


def _finite(teacher_logits: Tensor) -> Tensor:
    """Teacher logits with -inf (the log of a zero ensemble probability) replaced by the log
    of the smallest normal float: a channel that is zero everywhere then softens to a
    uniform distribution instead of 0 / 0. Finite logits are left as they are."""
    logits = _at_least_float32(teacher_logits)  # a float16 floor (log 6e-5) would be too high
    floor = math.log(torch.finfo(logits.dtype).tiny)
    return logits.masked_fill(torch.isneginf(logits), floor)


def _kl_terms(log_p: Tensor, log_q: Tensor) -> Tensor:
    """p (log p - log q) elementwise, from log-probabilities of the same shape.

    Both logs come from log_softmax, so identical inputs give exactly 0 (log(softmax)
    would differ from log_softmax by round-off, summed over many positions), and a teacher
    probability that underflows to 0 contributes 0: log p stays finite (`_finite`).
    """
    return log_p.exp() * (log_p - log_q)


def cross_entropy(logits: Tensor, target: Tensor, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """Cross-entropy with the labels, averaged over the labelled pixels of the batch.

    logits [B, C, H, W], target int64 [B, H, W] with `ignore_index` for void (DUDES eq. 1,
    Holder eq. 6). Unlike `F.cross_entropy(reduction="mean")`, a batch with no labelled
    pixel (unlabelled images distilled from teacher soft labels) gives 0, not NaN.
    """
    # In (at least) float32: the sum over a crop's pixels overflows float16.
    total = F.cross_entropy(
        _at_least_float32(logits), target, ignore_index=ignore_index, reduction="sum"
    )
    count = (target != ignore_index).sum().clamp_min(1)
    return total / count


def kd(
    student_logits: Tensor,
    teacher_logits: Tensor,
    temperature: float = 1.0,
    valid: Tensor | None = None,
) -> Tensor:
    """Hinton KD: T^2 KL(softmax(t / T) || softmax(s / T)) per pixel, summed over classes.

    student_logits, teacher_logits: [B, C, H, W]. The teacher is given as logits or
    log-probabilities: for an ensemble pass log(mean_probs) (`TeacherSignals.logits`), so
    softening it gives mean_probs^(1/T) renormalised. That is not the mean of the members'
    softened outputs (which would need every member's logits) but equals the ensemble mean
    exactly at T = 1. Zero teacher probabilities (log = -inf) contribute 0. The result is
    averaged over the `valid` pixels [B, H, W]. Also Holder & Shafique's T^2 L_dist (eq. 4-5).
    """
    _same_shape(student_logits, teacher_logits, "student_logits and teacher_logits")
    log_q = F.log_softmax(student_logits / temperature, dim=1)
    log_p = F.log_softmax(_finite(teacher_logits) / temperature, dim=1)
    per_pixel = _kl_terms(log_p, log_q).sum(dim=1)
    return temperature**2 * _masked_mean(per_pixel, valid)


def uncertainty_mse(pred: Tensor, target: Tensor, valid: Tensor | None = None) -> Tensor:
    """Holder & Shafique eq. 7: mean squared error between uncertainty maps.

    pred, target: [B, K, H, W] (K = C: the per-class head against the ensemble std Sigma).
    Averaged over the K channels and the `valid` pixels of the batch.
    """
    _same_shape(pred, target, "pred and target")
    per_pixel = (pred - target).pow(2).mean(dim=1)
    return _masked_mean(per_pixel, valid)


def rmsle(pred: Tensor, target: Tensor, valid: Tensor | None = None) -> Tensor:
    """DUDES eq. 2: sqrt(mean((log(1 + pred) - log(1 + target))^2)).

    pred, target: [B, K, H, W] non-negative (K = 1: the scalar head against pred_std). The
    mean runs over the channels and the `valid` pixels of the whole batch (the paper writes
    it per image; with a batch of one image both agree).
    """
    _same_shape(pred, target, "pred and target")
    per_pixel = (torch.log1p(pred) - torch.log1p(target)).pow(2).mean(dim=1)
    mse = _masked_mean(per_pixel, valid)
    # sqrt has an infinite slope at 0 (perfect student, empty mask); the clamp keeps the
    # gradient finite and changes the value by at most sqrt(tiny) ~ 1e-19.
    return mse.clamp_min(torch.finfo(mse.dtype).tiny).sqrt()


def channel_self_attention(features: Tensor, temperature: float = 4.0, beta: float = 0.4) -> Tensor:
    """Karine et al. eq. 1-2: channel self-attention, E_j = beta * sum_i x_ji A_i + A_j.

    features A: [B, C, H, W], seen as C channel vectors A_i of length N = H * W;
    x_ji = softmax over i of (A_i . A_j / T). Returns E: [B, C, H, W].
    """
    b, c, h, w = features.shape
    with _full_precision(features):
        a = _at_least_float32(features).reshape(b, c, h * w)
        energy = torch.bmm(a, a.transpose(1, 2))  # [B, C, C], energy[j, i] = A_j . A_i
        attention = F.softmax(energy / temperature, dim=2)  # normalised over i
        enhanced = beta * torch.bmm(attention, a) + a
    return enhanced.reshape(b, c, h, w).to(features.dtype)


SA_DISTANCES = ("norm", "mse")  # self_attention_loss: eq. 3 as written, or the text's MSE


def self_attention_loss(
    student_features: Tensor,
    teacher_features: Tensor,
    temperature: float = 4.0,
    beta: float = 0.4,
    distance: str = "norm",
) -> Tensor:
    """Karine et al. eq. 3: L_SA = (1/C) sum_j d(E_j^T, E_j^S), averaged over the batch.

    student_features, teacher_features: [B, C, H, W] of the same shape (the method adapts
    the channels and resizes the student first). distance "norm": d is the (unsquared)
    Euclidean norm of the channel map difference over its H * W positions, as eq. 3 writes
    it; "mse": the mean squared difference over the positions, as the text names it ("la
    perte quadratique moyenne"), which does not grow with the map size.
    """
    _same_shape(student_features, teacher_features, "student_features and teacher_features")
    diff = channel_self_attention(teacher_features, temperature, beta) - channel_self_attention(
        student_features, temperature, beta
    )
    if distance == "norm":
        per_channel = torch.linalg.vector_norm(diff.flatten(2), dim=2)  # [B, C]
    elif distance == "mse":
        per_channel = diff.flatten(2).square().mean(dim=2)
    else:
        raise ValueError(f"distance must be one of {SA_DISTANCES}, not {distance!r}")
    return per_channel.mean()


def cwd(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 4.0) -> Tensor:
    """Channel-wise distillation (Shu et al.; Karine et al. eq. 5).

    student_logits, teacher_logits: [B, C, H, W] score maps (or features). Each channel is
    turned into a distribution over its H * W positions by a softmax at temperature T;
    L = T^2 / C * sum_c KL(teacher_c || student_c), averaged over the batch.
    """
    _same_shape(student_logits, teacher_logits, "student_logits and teacher_logits")
    b, c = student_logits.shape[:2]
    # Both sides in (at least) float32: a half-precision softmax over thousands of
    # positions is off by ~0.03 in bfloat16, which made the KL of two maps negative.
    log_q = F.log_softmax(_at_least_float32(student_logits).reshape(b, c, -1) / temperature, dim=2)
    log_p = F.log_softmax(_finite(teacher_logits).reshape(b, c, -1) / temperature, dim=2)
    kl = _kl_terms(log_p, log_q).sum(dim=2)  # [B, C]
    return temperature**2 * kl.mean()


def reconstruction_loss(
    reconstruction: Tensor, features: Tensor, code: Tensor, sparsity_weight: float = 1e-7
) -> Tensor:
    """He et al. eq. 1: the translator's loss, ||F_t - D(E(F_t))||^2 + w ||E(F_t)||_1.

    reconstruction, features: [B, C, H, W]; code E(F_t): [B, C, h, w]. The reconstruction
    term is the mean squared error; the sparsity term is the sum of |code| over the batch
    with weight 1e-7, as in the torchdistill port of the method (the weight was lost from
    our copy of the paper).
    """
    return F.mse_loss(reconstruction, features) + sparsity_weight * code.abs().sum()


def adaptation_loss(student_features: Tensor, teacher_code: Tensor) -> Tensor:
    """He et al. eq. 2: L1 distance between L2-normalised adapted student features and the
    teacher's translated knowledge.

    student_features (adapter output), teacher_code (translator encoder output): [B, C, h, w]
    of the same shape. Each image's map is flattened and divided by its L2 norm (q = 2),
    then |difference| (p = 1) is averaged over all elements, as torchdistill's KTALoss does.
    """
    _same_shape(student_features, teacher_code, "student_features and teacher_code")
    s = F.normalize(student_features.flatten(1), p=2.0, dim=1)
    t = F.normalize(teacher_code.flatten(1), p=2.0, dim=1)
    return F.l1_loss(s, t)


def affinity(features: Tensor) -> Tensor:
    """He et al. eq. 3: cosine similarity of every pair of positions.

    features: [B, C, H, W] -> [B, H*W, H*W]. A position whose feature vector is all zero
    (possible after a ReLU) has similarity 0 with every position.
    """
    with _full_precision(features):
        flat = F.normalize(_at_least_float32(features).flatten(2), p=2.0, dim=1)  # [B, C, N]
        return torch.bmm(flat.transpose(1, 2), flat)


def affinity_loss(student_features: Tensor, teacher_code: Tensor) -> Tensor:
    """He et al. eq. 4: squared L2 distance between affinity matrices, averaged over the
    H*W x H*W position pairs and the batch.

    student_features, teacher_code: [B, C, h, w] with the same h, w (channels may differ).
    The mean (rather than a sum over positions) keeps the paper's weight of 1 independent
    of the feature resolution.
    """
    student_affinity, teacher_affinity = affinity(student_features), affinity(teacher_code)
    _same_shape(
        student_affinity, teacher_affinity, "the affinities of student and teacher", maps=False
    )
    return F.mse_loss(student_affinity, teacher_affinity)


def ja_kd_map(student_logits: Tensor, teacher_probs: Tensor, alpha: float = 0.5) -> Tensor:
    """NfS-SegNet eq. 1-2 per pixel: sum_c [-p_hat log p + alpha * smoothL1(p - p_hat)].

    student_logits: [B, C, H, W] (p = softmax), teacher_probs p_hat: [B, C, H, W]. Returns
    [B, H, W]. Eq. 1 prints `+ p_hat log p`; the cross-entropy it names is its negative.
    On probabilities |p - p_hat| <= 1, so smooth-L1 is 0.5 (p - p_hat)^2 here (methods.md).
    """
    _same_shape(student_logits, teacher_probs, "student_logits and teacher_probs")
    log_p = F.log_softmax(student_logits, dim=1)
    regression = F.smooth_l1_loss(log_p.exp(), teacher_probs, reduction="none", beta=1.0)
    return (-teacher_probs * log_p + alpha * regression).sum(dim=1)


def ja_kd(
    student_logits: Tensor,
    teacher_probs: Tensor,
    alpha: float = 0.5,
    valid: Tensor | None = None,
) -> Tensor:
    """NfS-SegNet JA-KD (eq. 1-2): `ja_kd_map` averaged over the `valid` pixels [B, H, W]."""
    return _masked_mean(ja_kd_map(student_logits, teacher_probs, alpha), valid)


def median_mask(variance: Tensor, median_over: str = "image") -> Tensor:
    """NfS-SegNet eq. 3's binarised uncertainty: 1 where the variance is above its median.

    variance: [B, 1, H, W] or [B, H, W] -> bool [B, H, W]. `median_over="image"` takes the
    median of each image's map, `"batch"` one median over the whole batch. The median is
    the lower middle value for an even count (`torch.median`), and "above" is strict, so
    at most half the pixels are selected and a constant map selects none.
    """
    if median_over not in MEDIAN_SCOPES:
        raise ValueError(f"median_over must be one of {MEDIAN_SCOPES}, got {median_over!r}")
    v = variance.reshape(variance.shape[0], -1)
    if median_over == "image":
        median = v.median(dim=1, keepdim=True).values
    else:
        median = v.median()
    return (v > median).reshape(variance.shape[0], *variance.shape[-2:])


def u_kd(
    student_logits: Tensor,
    teacher_probs: Tensor,
    variance: Tensor,
    alpha: float = 0.5,
    valid: Tensor | None = None,
    median_over: str = "image",
) -> Tensor:
    """NfS-SegNet U-KD (eq. 3): the JA-KD map times the binarised teacher variance.

    student_logits, teacher_probs: [B, C, H, W]; variance: [B, 1, H, W] (MC-dropout).
    Averaged over all `valid` pixels, the masked-out ones counting as 0, so U-KD and
    JA-KD values are on the same scale.
    """
    uncertain = median_mask(variance, median_over).to(student_logits.dtype)
    return _masked_mean(ja_kd_map(student_logits, teacher_probs, alpha) * uncertain, valid)

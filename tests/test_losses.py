"""Every loss against an independent float64 numpy computation of its paper equation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from segdistill import losses
from segdistill.data.labels import IGNORE_INDEX

B, C, H, W = 2, 4, 3, 5


def _t(a: np.ndarray, grad: bool = False) -> torch.Tensor:
    return torch.tensor(a, dtype=torch.float64, requires_grad=grad)


def _softmax(x: np.ndarray, axis: int) -> np.ndarray:
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture
def target(rng: np.random.Generator) -> np.ndarray:
    t = rng.integers(0, C, size=(B, H, W))
    t[0, 0, :3] = IGNORE_INDEX
    t[1, 2, 4] = IGNORE_INDEX
    return t


def _np_valid(target: np.ndarray) -> np.ndarray:
    return target != IGNORE_INDEX


def test_cross_entropy_matches_numpy(rng, target):
    logits = rng.normal(size=(B, C, H, W))
    total, count = 0.0, 0
    for b in range(B):
        for y in range(H):
            for x in range(W):
                label = target[b, y, x]
                if label == IGNORE_INDEX:
                    continue
                z = logits[b, :, y, x]
                total += -(z[label] - np.log(np.exp(z).sum()))
                count += 1
    got = losses.cross_entropy(_t(logits), torch.tensor(target), IGNORE_INDEX)
    assert got.item() == pytest.approx(total / count, rel=1e-10)


def test_cross_entropy_all_ignore_is_zero_and_connected():
    logits = torch.randn(B, C, H, W, requires_grad=True)
    target = torch.full((B, H, W), IGNORE_INDEX)
    loss = losses.cross_entropy(logits, target, IGNORE_INDEX)
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.isfinite(logits.grad).all()


def test_cross_entropy_ignore_index_is_a_parameter():
    logits = torch.randn(1, C, H, W)
    target = torch.full((1, H, W), 7)
    assert losses.cross_entropy(logits, target, ignore_index=7).item() == 0.0


def test_cross_entropy_averages_over_the_pixels_not_labelled_the_given_ignore_index(rng, target):
    # data.ignore_index may be any value outside the classes, not only 255: the pixels
    # labelled with it are skipped and the mean runs over the others (a batch of only void
    # pixels, as above, cannot tell the count of the labelled pixels from the count of all).
    logits = rng.normal(size=(B, C, H, W))
    void = C
    coded = np.where(target == IGNORE_INDEX, void, target)
    log_probs = logits - logits.max(axis=1, keepdims=True)
    log_probs -= np.log(np.exp(log_probs).sum(axis=1, keepdims=True))
    b, y, x = np.nonzero(coded != void)
    expected = -log_probs[b, coded[b, y, x], y, x].mean()
    got = losses.cross_entropy(_t(logits), torch.tensor(coded), ignore_index=void)
    assert got.item() == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0])
def test_kd_matches_numpy(rng, target, temperature):
    s = rng.normal(size=(B, C, H, W))
    t = rng.normal(size=(B, C, H, W))
    valid = _np_valid(target)
    p = _softmax(t / temperature, axis=1)
    q = _softmax(s / temperature, axis=1)
    kl = (p * (np.log(p) - np.log(q))).sum(axis=1)
    expected = temperature**2 * kl[valid].mean()
    got = losses.kd(_t(s), _t(t), temperature, torch.tensor(valid))
    assert got.item() == pytest.approx(expected, rel=1e-10)
    # valid=None: every pixel
    got_all = losses.kd(_t(s), _t(t), temperature)
    assert got_all.item() == pytest.approx(temperature**2 * kl.mean(), rel=1e-10)


def test_kd_zero_when_student_equals_teacher(rng):
    s = _t(rng.normal(size=(B, C, H, W)))
    assert losses.kd(s, s.clone(), 3.0).item() == pytest.approx(0.0, abs=1e-12)


def test_kd_ensemble_log_mean_probs_with_zeros_is_finite(rng):
    probs = _softmax(rng.normal(size=(B, C, H, W)), axis=1)
    probs[:, 0] = 0.0  # a class the ensemble never predicts
    probs /= probs.sum(axis=1, keepdims=True)
    s = _t(rng.normal(size=(B, C, H, W)), grad=True)
    loss = losses.kd(s, _t(probs).log(), 1.0)
    loss.backward()
    q = _softmax(s.detach().numpy(), axis=1)
    p = probs
    with np.errstate(divide="ignore", invalid="ignore"):
        kl = np.where(p > 0, p * (np.log(p) - np.log(q)), 0.0).sum(axis=1)
    assert loss.item() == pytest.approx(kl.mean(), rel=1e-10)
    assert torch.isfinite(s.grad).all()


def test_kd_all_invalid_is_zero():
    s = torch.randn(B, C, H, W, requires_grad=True)
    loss = losses.kd(s, torch.randn(B, C, H, W), 2.0, torch.zeros(B, H, W, dtype=torch.bool))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.isfinite(s.grad).all()


def test_uncertainty_mse_matches_eq7(rng, target):
    pred = rng.uniform(size=(B, C, H, W))
    sigma = rng.uniform(size=(B, C, H, W)) * 0.3
    # eq. 7: sum over v, u, c of squared differences over C x H x W (per image, all pixels)
    expected = np.mean([((pred[b] - sigma[b]) ** 2).sum() / (C * H * W) for b in range(B)])
    assert losses.uncertainty_mse(_t(pred), _t(sigma)).item() == pytest.approx(expected, rel=1e-10)
    valid = _np_valid(target)
    masked = ((pred - sigma) ** 2).transpose(0, 2, 3, 1)[valid].mean()
    got = losses.uncertainty_mse(_t(pred), _t(sigma), torch.tensor(valid))
    assert got.item() == pytest.approx(masked, rel=1e-10)


def test_rmsle_matches_numpy(rng, target):
    pred = rng.uniform(size=(B, 1, H, W))
    z = rng.uniform(size=(B, 1, H, W)) * 0.5
    valid = _np_valid(target)
    total, n = 0.0, 0
    for b in range(B):
        for y in range(H):
            for x in range(W):
                if valid[b, y, x]:
                    total += (np.log(z[b, 0, y, x] + 1) - np.log(pred[b, 0, y, x] + 1)) ** 2
                    n += 1
    got = losses.rmsle(_t(pred), _t(z), torch.tensor(valid))
    assert got.item() == pytest.approx(np.sqrt(total / n), rel=1e-10)
    full = np.sqrt(((np.log1p(z) - np.log1p(pred)) ** 2).mean())
    assert losses.rmsle(_t(pred), _t(z)).item() == pytest.approx(full, rel=1e-10)


def test_rmsle_averages_over_channels_and_pixels(rng, target):
    # K = 3 channels: the mean runs over every (channel, valid pixel) pair, not a sum over
    # the channels (DUDES has K = 1, where both agree).
    pred = rng.uniform(size=(B, 3, H, W))
    z = rng.uniform(size=(B, 3, H, W)) * 0.5
    valid = _np_valid(target)
    squared = (np.log1p(pred) - np.log1p(z)) ** 2  # [B, K, H, W]
    expected = np.sqrt(squared.transpose(0, 2, 3, 1)[valid].mean())
    got = losses.rmsle(_t(pred), _t(z), torch.tensor(valid))
    assert got.item() == pytest.approx(expected, rel=1e-10)


def test_rmsle_perfect_and_empty_have_finite_gradients(rng):
    z = rng.uniform(size=(B, 1, H, W))
    pred = _t(z, grad=True)
    loss = losses.rmsle(pred, _t(z))
    loss.backward()
    assert loss.item() == pytest.approx(0.0, abs=1e-12)
    assert torch.isfinite(pred.grad).all()
    empty = losses.rmsle(_t(z, grad=True), _t(z * 0), torch.zeros(B, H, W, dtype=torch.bool))
    assert empty.item() == pytest.approx(0.0, abs=1e-12)


def _np_self_attention(a: np.ndarray, temperature: float, beta: float) -> np.ndarray:
    """Karine eq. 1-2 with explicit loops over channels."""
    b_, c_, h_, w_ = a.shape
    out = np.zeros_like(a)
    for b in range(b_):
        flat = a[b].reshape(c_, h_ * w_)
        for j in range(c_):
            scores = np.array([flat[i] @ flat[j] / temperature for i in range(c_)])
            x_j = np.exp(scores - scores.max())
            x_j /= x_j.sum()
            e_j = beta * sum(x_j[i] * flat[i] for i in range(c_)) + flat[j]
            out[b, j] = e_j.reshape(h_, w_)
    return out


def test_channel_self_attention_matches_numpy(rng):
    a = rng.normal(size=(B, C, H, W))
    got = losses.channel_self_attention(_t(a), temperature=4.0, beta=0.4)
    np.testing.assert_allclose(got.numpy(), _np_self_attention(a, 4.0, 0.4), rtol=1e-10)


def test_self_attention_loss_matches_eq3(rng):
    s = rng.normal(size=(B, C, H, W))
    t = rng.normal(size=(B, C, H, W))
    es, et = _np_self_attention(s, 4.0, 0.4), _np_self_attention(t, 4.0, 0.4)
    per_image = [
        sum(np.sqrt(((et[b, j] - es[b, j]) ** 2).sum()) for j in range(C)) / C for b in range(B)
    ]
    got = losses.self_attention_loss(_t(s), _t(t), 4.0, 0.4)
    assert got.item() == pytest.approx(np.mean(per_image), rel=1e-10)
    assert losses.self_attention_loss(_t(s), _t(s)).item() == 0.0
    # "mse", the text's reading: mean over positions of the squared difference.
    per_image_mse = [
        sum(((et[b, j] - es[b, j]) ** 2).mean() for j in range(C)) / C for b in range(B)
    ]
    got_mse = losses.self_attention_loss(_t(s), _t(t), 4.0, 0.4, distance="mse")
    assert got_mse.item() == pytest.approx(np.mean(per_image_mse), rel=1e-10)
    with pytest.raises(ValueError, match="distance"):
        losses.self_attention_loss(_t(s), _t(t), distance="l1")


def test_cwd_matches_eq5(rng):
    s = rng.normal(size=(B, C, H, W))
    t = rng.normal(size=(B, C, H, W))
    temperature = 4.0
    per_image = []
    for b in range(B):
        total = 0.0
        for c in range(C):
            p = _softmax(t[b, c].ravel() / temperature, axis=0)
            q = _softmax(s[b, c].ravel() / temperature, axis=0)
            total += (p * np.log(p / q)).sum()
        per_image.append(temperature**2 / C * total)
    got = losses.cwd(_t(s), _t(t), temperature)
    assert got.item() == pytest.approx(np.mean(per_image), rel=1e-10)
    assert losses.cwd(_t(s), _t(s), temperature).item() == pytest.approx(0.0, abs=1e-12)


def test_cwd_teacher_channel_of_zero_probabilities_is_finite(rng):
    t = _t(rng.normal(size=(B, C, H, W)))
    t[:, 1] = -torch.inf  # log(mean_probs) of a class the ensemble never predicts
    s = _t(rng.normal(size=(B, C, H, W)), grad=True)
    loss = losses.cwd(s, t)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(s.grad).all()


def test_reconstruction_loss_matches_eq1(rng):
    f = rng.normal(size=(B, C, 4, 6))
    recon = rng.normal(size=(B, C, 4, 6))
    code = rng.normal(size=(B, C, 2, 3))
    expected = ((f - recon) ** 2).mean() + 1e-3 * np.abs(code).sum()
    got = losses.reconstruction_loss(_t(recon), _t(f), _t(code), sparsity_weight=1e-3)
    assert got.item() == pytest.approx(expected, rel=1e-10)


def test_adaptation_loss_matches_eq2(rng):
    s = rng.normal(size=(B, C, H, W))
    t = rng.normal(size=(B, C, H, W))
    total = 0.0
    for b in range(B):
        sn = s[b].ravel() / np.sqrt((s[b] ** 2).sum())
        tn = t[b].ravel() / np.sqrt((t[b] ** 2).sum())
        total += np.abs(sn - tn).sum()
    got = losses.adaptation_loss(_t(s), _t(t))
    assert got.item() == pytest.approx(total / s.size, rel=1e-10)
    # normalised: identical up to a positive scale -> zero
    assert losses.adaptation_loss(_t(s), _t(3.0 * s)).item() == pytest.approx(0.0, abs=1e-12)


def _np_affinity(f: np.ndarray) -> np.ndarray:
    b_, c_, h_, w_ = f.shape
    n = h_ * w_
    out = np.zeros((b_, n, n))
    for b in range(b_):
        flat = f[b].reshape(c_, n)
        for i in range(n):
            for j in range(n):
                fi, fj = flat[:, i], flat[:, j]
                out[b, i, j] = fi @ fj / (np.linalg.norm(fi) * np.linalg.norm(fj))
    return out


def test_affinity_matches_cosine_of_positions(rng):
    f = rng.normal(size=(B, C, H, W))
    got = losses.affinity(_t(f))
    assert got.shape == (B, H * W, H * W)
    np.testing.assert_allclose(got.numpy(), _np_affinity(f), rtol=1e-6, atol=1e-7)


def test_affinity_loss_matches_eq4(rng):
    s = rng.normal(size=(B, 6, H, W))  # channels may differ: only positions are compared
    t = rng.normal(size=(B, C, H, W))
    expected = ((_np_affinity(s) - _np_affinity(t)) ** 2).mean()
    got = losses.affinity_loss(_t(s), _t(t))
    assert got.item() == pytest.approx(expected, rel=1e-6)
    assert losses.affinity_loss(_t(t), _t(t)).item() == pytest.approx(0.0, abs=1e-12)


def _np_smooth_l1(x: np.ndarray) -> np.ndarray:
    return np.where(np.abs(x) < 1, 0.5 * x**2, np.abs(x) - 0.5)


def np_ja_kd_map(s: np.ndarray, p_hat: np.ndarray, alpha: float) -> np.ndarray:
    p = _softmax(s, axis=1)
    return (-p_hat * np.log(p) + alpha * _np_smooth_l1(p - p_hat)).sum(axis=1)


def test_ja_kd_matches_eq1(rng, target):
    s = rng.normal(size=(B, C, H, W)) * 3
    p_hat = _softmax(rng.normal(size=(B, C, H, W)), axis=1)
    valid = _np_valid(target)
    expected = np_ja_kd_map(s, p_hat, 0.5)[valid].mean()
    got = losses.ja_kd(_t(s), _t(p_hat), 0.5, torch.tensor(valid))
    assert got.item() == pytest.approx(expected, rel=1e-10)


def test_smooth_l1_branch_beyond_one():
    # |p - p_hat| can only reach 1 at the extremes; check the linear branch directly.
    s = torch.tensor([[[[30.0]], [[-30.0]]]], dtype=torch.float64)
    p_hat = torch.tensor([[[[0.0]], [[1.0]]]], dtype=torch.float64)
    got = losses.ja_kd_map(s, p_hat, alpha=1.0)
    expected = np_ja_kd_map(s.numpy(), p_hat.numpy(), 1.0)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-10)


def np_lower_median(v: np.ndarray) -> float:
    flat = np.sort(v.ravel())
    return flat[(flat.size - 1) // 2]


def test_median_mask_per_image_and_batch(rng):
    variance = rng.uniform(size=(B, 1, 4, 4)) * np.array([1.0, 10.0])[:, None, None, None]
    per_image = np.stack([variance[b, 0] > np_lower_median(variance[b]) for b in range(B)])
    got = losses.median_mask(_t(variance), "image")
    np.testing.assert_array_equal(got.numpy(), per_image)
    assert got.sum().item() == B * 8  # 16 distinct values: 8 above the lower median
    per_batch = variance[:, 0] > np_lower_median(variance)
    np.testing.assert_array_equal(losses.median_mask(_t(variance), "batch").numpy(), per_batch)
    assert not losses.median_mask(torch.ones(B, 1, H, W)).any()
    with pytest.raises(ValueError, match="median_over"):
        losses.median_mask(_t(variance), "pixel")


def test_u_kd_matches_eq3(rng, target):
    s = rng.normal(size=(B, C, H, W))
    p_hat = _softmax(rng.normal(size=(B, C, H, W)), axis=1)
    variance = rng.uniform(size=(B, 1, H, W))
    valid = _np_valid(target)
    u = np.stack([variance[b, 0] > np_lower_median(variance[b]) for b in range(B)])
    expected = (u * np_ja_kd_map(s, p_hat, 0.5))[valid].mean()
    got = losses.u_kd(_t(s), _t(p_hat), _t(variance), 0.5, torch.tensor(valid))
    assert got.item() == pytest.approx(expected, rel=1e-10)


def test_half_precision_inputs_give_the_full_precision_values():
    # A float16 sum over a crop's pixels passes 65504 (inf), and float16's smallest normal
    # number made RMSLE 0.0078 for a perfect student. Inputs as a user's .half() network gives.
    gen = torch.Generator().manual_seed(0)
    student = torch.randn(1, 19, 128, 256, generator=gen)
    teacher = torch.randn(1, 19, 128, 256, generator=gen)
    target = torch.randint(0, 19, (1, 128, 256), generator=gen)
    every = torch.ones(1, 128, 256, dtype=torch.bool)
    pairs = [
        (losses.cross_entropy, (student, target)),
        (lambda s, t: losses.ja_kd(s, t, valid=every), (student, teacher.softmax(1))),
        (lambda s, t: losses.kd(s, t, valid=every), (student, teacher)),
    ]
    for loss, (first, second) in pairs:
        full = loss(first, second)
        half = loss(first.half(), second.half() if second.is_floating_point() else second)
        assert torch.isfinite(half) and half.item() == pytest.approx(full.item(), rel=2e-3)
    same = torch.full((1, 1, 8, 8), 0.2).half()
    assert losses.rmsle(same, same).item() < 1e-18


def test_maps_of_other_shapes_are_refused_not_broadcast() -> None:
    """A [B, 1, H, W] mask broadcast against [B, H, W] pixel losses to [B, B, H, W]: KD
    gave 1.98 for 0.67. A [B, H, W] uncertainty against a [B, 1, H, W] target likewise."""
    student, teacher = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    valid = torch.rand(2, 4, 4) > 0.3
    with pytest.raises(
        ValueError, match=r"valid must be \[B, H, W\] = \[2, 4, 4\], not \[2, 1, 4, 4\]"
    ):
        losses.kd(student, teacher, 1.0, valid[:, None])
    with pytest.raises(ValueError, match="student_logits and teacher_logits must have the same"):
        losses.kd(student, teacher[:, :2])
    pred, target = torch.rand(2, 1, 4, 4), torch.rand(2, 1, 4, 4)
    with pytest.raises(ValueError, match=r"pred and target must have the same shape"):
        losses.rmsle(pred[:, 0], target)
    with pytest.raises(ValueError, match=r"pred and target must have the same shape"):
        losses.uncertainty_mse(pred, target[:, 0])
    assert torch.isfinite(losses.kd(student, teacher, 1.0, valid))
    # A teacher batch of one broadcast against two student images: JA-KD warned and
    # self-attention gave a number without a word.
    probs = torch.softmax(teacher, dim=1)
    for loss, names, second in [
        (losses.ja_kd, "student_logits and teacher_probs", probs[:1]),
        (losses.self_attention_loss, "student_features and teacher_features", teacher[:1]),
        (losses.cwd, "student_logits and teacher_logits", teacher[:1]),
        (losses.adaptation_loss, "student_features and teacher_code", teacher[:1]),
        (losses.affinity_loss, "the affinities of student and teacher", teacher[:, :, :2]),
    ]:
        with pytest.raises(ValueError, match=f"{names} must have the same shape"):
            loss(student, second)
    # The affinity compares positions, so the channels may differ.
    assert torch.isfinite(losses.affinity_loss(student, teacher[:, :2]))


def test_attention_and_affinity_products_ignore_autocast(rng):
    """Under a mixed-precision autocast the channel self-attention (Karine eq. 1-2) and the
    affinity (He eq. 3) give their float32 values: their dot products over all positions
    run with autocast off, not in bfloat16 / float16."""
    a = torch.tensor(rng.normal(size=(B, C, 6, 8)), dtype=torch.float32)
    expected_attention = losses.channel_self_attention(a, 4.0, 0.4)
    expected_affinity = losses.affinity(a)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got_attention = losses.channel_self_attention(a, 4.0, 0.4)
        got_affinity = losses.affinity(a)
    assert got_attention.dtype == got_affinity.dtype == torch.float32
    torch.testing.assert_close(got_attention, expected_attention)
    torch.testing.assert_close(got_affinity, expected_affinity)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cwd_of_half_precision_maps_is_the_kl_of_their_values(rng, dtype):
    """CWD's softmax runs over all H * W positions of a channel: in bfloat16 its log
    probabilities are off by ~0.03, which the teacher (taken to float32) does not share, so
    the KL of two bf16 maps came out negative (-0.036 for the same map twice, -0.036 for
    a true 0.0012). The expected value is the KL of the very values the half tensors hold."""
    s = rng.normal(size=(2, 19, 32, 64)) * 3
    t = s + rng.normal(size=s.shape) * 0.05
    s_half = torch.tensor(s, dtype=torch.float32).to(dtype)
    t_half = torch.tensor(t, dtype=torch.float32).to(dtype)
    s_held, t_held = s_half.double().numpy(), t_half.double().numpy()
    temperature = 4.0
    b, c = s.shape[:2]
    p = _softmax(t_held.reshape(b, c, -1) / temperature, axis=2)
    q = _softmax(s_held.reshape(b, c, -1) / temperature, axis=2)
    expected = temperature**2 * (p * np.log(p / q)).sum(axis=2).mean()
    got = losses.cwd(s_half, t_half, temperature)
    assert got.item() == pytest.approx(expected, rel=1e-2)
    assert losses.cwd(s_half, s_half, temperature).item() == pytest.approx(0.0, abs=1e-6)


def test_one_image_without_its_batch_axis_is_refused_not_misread(rng):
    """[C, H, W] maps (a batch axis forgotten) were read as [B, C, H] ... : KD took its
    softmax over the image rows, CWD its channels for images, RMSLE averaged the rows as
    channels, each returning a plausible number. They must be refused, as other shapes."""
    s = torch.tensor(rng.normal(size=(C, H, W)))
    t = torch.tensor(rng.normal(size=(C, H, W)))
    u, v = torch.rand(1, H, W, dtype=torch.float64), torch.rand(1, H, W, dtype=torch.float64)
    for call in [
        lambda: losses.kd(s, t, 2.0),
        lambda: losses.cwd(s, t),
        lambda: losses.ja_kd(s, t.softmax(0)),
        lambda: losses.rmsle(u, v),
        lambda: losses.uncertainty_mse(u, v),
    ]:
        with pytest.raises(ValueError, match=r"\[B, .*H, W\]"):
            call()

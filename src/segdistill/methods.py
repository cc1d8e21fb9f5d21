"""Distillation methods: thin `nn.Module`s that feed `segdistill.losses` from the signals.

A `Method` reads a `SegOutput` (student), a `TeacherSignals` and the labels, and returns its
*distillation* terms, each already multiplied by its paper's coefficient (e.g. Karine's
14 L_SA and 3 L_KD), so the logged values add up to the loss. The cross-entropy with the
labels is not a method term: every paper has one, and two composed methods must not count
it twice. Each method only states the weight its paper gives it (`ce_weight`, e.g. Holder's
alpha = 0.1), and a `MethodSet` adds one "task/ce" term. Methods with trainable parts
(adapters, the translator) hold them as submodules, so an optimiser over
`MethodSet.parameters()` (those with `requires_grad`) trains them with the student.

Build from the config with `build_methods`; see docs/methods.md for the choices made where
a paper is ambiguous.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, ClassVar, cast

import torch
from torch import Tensor, nn

from segdistill import losses
from segdistill.data.labels import IGNORE_INDEX
from segdistill.errors import ConfigError, TrainingError, did_you_mean
from segdistill.models.decoders import resize
from segdistill.outputs import SegOutput, TeacherSignals

# The pseudo tap naming the class scores, for methods that can work on logits or features.
LOGITS = "logits"
# The feature tap feature-level methods read unless told otherwise.
DEFAULT_TAP = "encoder_out"


def _number(method: str, key: str, value: Any, *, positive: bool = False) -> float:
    """`value` as a float, or a ConfigError naming the method option."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"method {method!r}: option {key}={value!r} must be a number")
    if not math.isfinite(value):
        # `options` is a free mapping: the config's own finiteness check does not reach it.
        raise ConfigError(f"method {method!r}: option {key}={value!r} must be a finite number")
    if value < 0 or (positive and value == 0):
        bound = "> 0" if positive else ">= 0"
        raise ConfigError(f"method {method!r}: option {key}={value!r} must be {bound}")
    return float(value)


def _conv_bn_relu(
    in_channels: int, out_channels: int, stride: int = 1, transposed: bool = False
) -> nn.Sequential:
    """3x3 conv (or transposed conv), BN, ReLU: the block of He et al.'s translator/adapter."""
    conv_type = nn.ConvTranspose2d if transposed else nn.Conv2d
    return nn.Sequential(
        conv_type(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class Method(nn.Module):
    """Base of all methods.

    `forward(student, teacher, target) -> dict[str, Tensor]` returns the method's named,
    paper-weighted distillation terms (scalars); target is int64 [B, H, W]. Pixel-wise
    methods also take `teacher_valid` (see `PixelMethod`).
    `needs` names the teacher signals it reads (`outputs.SIGNAL_NAMES`); `teacher_taps` and
    `student_taps` the feature taps it reads when `needs` holds "features".
    """

    name: ClassVar[str]
    signals: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, ce_weight: float = 1.0, ignore_index: int = IGNORE_INDEX) -> None:
        super().__init__()
        self.ce_weight = _number(self.name, "ce_weight", ce_weight)
        self.ignore_index = ignore_index

    @property
    def teacher_taps(self) -> frozenset[str]:
        return frozenset()

    @property
    def student_taps(self) -> frozenset[str]:
        return frozenset()

    @property
    def needs(self) -> frozenset[str]:
        return self.signals | ({"features"} if self.teacher_taps else frozenset())

    def check_student(self, student: SegOutput) -> None:
        """ConfigError when the student (one forward pass's output) lacks what the method
        reads, e.g. an uncertainty head: checked before training, not at the first step."""

    def _student_uncertainty(self, student: SegOutput, channels: int, head: str) -> Tensor:
        """The student's uncertainty map [B, channels, H, W], or a ConfigError naming the head."""
        unc = student.uncertainty
        if unc is None or unc.shape[1] != channels:
            got = "none" if unc is None else f"{unc.shape[1]} channels"
            raise ConfigError(
                f"method {self.name!r} needs a student with model.uncertainty_head: {head} "
                f"({channels} channels); got {got}"
            )
        return unc


class PixelMethod(Method):
    """A method whose terms average over pixels; `distill_void` says whether pixels labelled
    `ignore_index` count (the teacher's signals exist there too).

    `forward(student, teacher, target, teacher_valid=None)`: teacher_valid, bool [B, H, W],
    marks the pixels where the teacher's signals exist; the others never count. A teacher
    cache gives it: its maps are zero in the padding of a random crop (`teacher_cache`).
    """

    def __init__(
        self, distill_void: bool = True, ce_weight: float = 1.0, ignore_index: int = IGNORE_INDEX
    ) -> None:
        super().__init__(ce_weight=ce_weight, ignore_index=ignore_index)
        if not isinstance(distill_void, bool):
            raise ConfigError(f"method {self.name!r}: option distill_void must be true or false")
        self.distill_void = distill_void

    def _valid(self, target: Tensor, teacher_valid: Tensor | None) -> Tensor | None:
        labelled = None if self.distill_void else target != self.ignore_index
        if teacher_valid is None:
            return labelled
        return teacher_valid if labelled is None else labelled & teacher_valid


class FeatureMethod(Method):
    """A method that compares a student tap with a teacher tap ("logits" or a feature name)."""

    def __init__(
        self, student_tap: str, teacher_tap: str, ce_weight: float, ignore_index: int
    ) -> None:
        super().__init__(ce_weight=ce_weight, ignore_index=ignore_index)
        for key, tap in (("student_tap", student_tap), ("teacher_tap", teacher_tap)):
            if not isinstance(tap, str):
                raise ConfigError(f"method {self.name!r}: option {key}={tap!r} must be a tap name")
        self.student_tap = student_tap
        self.teacher_tap = teacher_tap

    @property
    def teacher_taps(self) -> frozenset[str]:
        return frozenset({self.teacher_tap} - {LOGITS})

    @property
    def student_taps(self) -> frozenset[str]:
        return frozenset({self.student_tap} - {LOGITS})

    @property
    def needs(self) -> frozenset[str]:
        return super().needs | ({LOGITS} if self.teacher_tap == LOGITS else frozenset())

    def _student_map(self, student: SegOutput) -> Tensor:
        if self.student_tap == LOGITS:
            return student.logits
        if self.student_tap not in student.features:
            raise ConfigError(
                f"method {self.name!r}: the student has no feature tap "
                f"student_tap={self.student_tap!r} (it has {sorted(student.features)})"
            )
        return student.features[self.student_tap]

    def _teacher_map(self, teacher: TeacherSignals) -> Tensor:
        if self.teacher_tap == LOGITS:
            return teacher.require(LOGITS).detach()
        if self.teacher_tap not in teacher.features:
            raise ConfigError(
                f"method {self.name!r}: the teacher has no feature tap "
                f"teacher_tap={self.teacher_tap!r} (it has {sorted(teacher.features)})"
            )
        return teacher.features[self.teacher_tap].detach()


def _channel_adapter(student_channels: int, teacher_channels: int) -> nn.Module:
    """1x1 conv from the student's to the teacher's channel count (identity when equal)."""
    if student_channels == teacher_channels:
        return nn.Identity()
    return nn.Conv2d(student_channels, teacher_channels, kernel_size=1)


class KD(PixelMethod):
    """Hinton KD per pixel: T^2 KL(teacher_T || student_T) (`losses.kd`).

    The teacher is read as `TeacherSignals.logits` (log(mean_probs) for an ensemble, which
    softens to mean_probs^(1/T) renormalised). Default T = 2, the best of the values He et
    al. report for pixel-wise KD (Table 3: T = 2, 4, 6).
    """

    name = "kd"
    signals = frozenset({LOGITS})

    def __init__(
        self,
        temperature: float = 2.0,
        distill_void: bool = True,
        ce_weight: float = 1.0,
        ignore_index: int = IGNORE_INDEX,
    ) -> None:
        super().__init__(distill_void=distill_void, ce_weight=ce_weight, ignore_index=ignore_index)
        self.temperature = _number(self.name, "temperature", temperature, positive=True)

    def forward(
        self,
        student: SegOutput,
        teacher: TeacherSignals,
        target: Tensor,
        teacher_valid: Tensor | None = None,
    ) -> dict[str, Tensor]:
        t = teacher.require(LOGITS).detach()
        valid = self._valid(target, teacher_valid)
        return {"kl": losses.kd(student.logits, t, self.temperature, valid)}


class Holder(PixelMethod):
    """Holder & Shafique uncertainty distillation (eq. 4):
    T^2 KL(M || student) + alpha CE + beta MSE(per-class uncertainty, Sigma).

    M = mean_probs and Sigma = std of the ensemble (eq. 3); the student needs the
    `per_class` uncertainty head. alpha is this method's `ce_weight` (0.1); beta = 1.1.
    The paper gives no T; the default T = 1 makes M exactly the ensemble mean. At T != 1
    only M is softened: Sigma is the std at T = 1 (the paper's eq. 3 takes it at T too).
    Terms: "dist" (T^2 L_dist, all pixels), "uncertainty_mse" (beta L_unc, all pixels).
    """

    name = "holder"
    signals = frozenset({"mean_probs", "std"})

    def __init__(
        self,
        temperature: float = 1.0,
        beta: float = 1.1,
        distill_void: bool = True,
        ce_weight: float = 0.1,
        ignore_index: int = IGNORE_INDEX,
    ) -> None:
        super().__init__(distill_void=distill_void, ce_weight=ce_weight, ignore_index=ignore_index)
        self.temperature = _number(self.name, "temperature", temperature, positive=True)
        self.beta = _number(self.name, "beta", beta)

    def forward(
        self,
        student: SegOutput,
        teacher: TeacherSignals,
        target: Tensor,
        teacher_valid: Tensor | None = None,
    ) -> dict[str, Tensor]:
        unc = self._per_class_uncertainty(student)
        valid = self._valid(target, teacher_valid)
        log_mean = teacher.require("mean_probs").detach().log()
        std = teacher.require("std").detach()
        return {
            "dist": losses.kd(student.logits, log_mean, self.temperature, valid),
            "uncertainty_mse": self.beta * losses.uncertainty_mse(unc, std, valid),
        }

    def check_student(self, student: SegOutput) -> None:
        self._per_class_uncertainty(student)

    def _per_class_uncertainty(self, student: SegOutput) -> Tensor:
        return self._student_uncertainty(student, student.logits.shape[1], "per_class")


class DUDES(PixelMethod):
    """DUDES (eq. 3): CE + RMSLE(scalar uncertainty, teacher pred_std).

    pred_std is the ensemble std of the probability of the class the ensemble mean predicts.
    The student needs the `scalar` uncertainty head. Void pixels count by default, as the
    paper uses them for the uncertainty (`distill_void`). Term: "uncertainty_rmsle".
    """

    name = "dudes"
    signals = frozenset({"pred_std"})

    def forward(
        self,
        student: SegOutput,
        teacher: TeacherSignals,
        target: Tensor,
        teacher_valid: Tensor | None = None,
    ) -> dict[str, Tensor]:
        unc = self._student_uncertainty(student, 1, "scalar")
        pred_std = teacher.require("pred_std").detach()
        valid = self._valid(target, teacher_valid)
        return {"uncertainty_rmsle": losses.rmsle(unc, pred_std, valid)}

    def check_student(self, student: SegOutput) -> None:
        self._student_uncertainty(student, 1, "scalar")


class CWD(FeatureMethod):
    """Channel-wise distillation (Shu et al.), on the logits by default (`losses.cwd`).

    With a feature tap, a 1x1 conv adapter (trained with the student) maps the student's
    channels to the teacher's when they differ, and the student map is resized bilinearly
    to the teacher's. Defaults T = 4 and coefficient 3 (Shu et al. for logits; Karine's
    lambda_2). Term: "cwd".
    """

    name = "cwd"

    def __init__(
        self,
        student_channels: int,
        teacher_channels: int,
        student_tap: str = LOGITS,
        teacher_tap: str = LOGITS,
        temperature: float = 4.0,
        lambda_cwd: float = 3.0,
        ce_weight: float = 1.0,
        ignore_index: int = IGNORE_INDEX,
    ) -> None:
        super().__init__(student_tap, teacher_tap, ce_weight, ignore_index)
        self.temperature = _number(self.name, "temperature", temperature, positive=True)
        self.lambda_cwd = _number(self.name, "lambda_cwd", lambda_cwd)
        self.adapter = _channel_adapter(student_channels, teacher_channels)

    def forward(
        self, student: SegOutput, teacher: TeacherSignals, target: Tensor
    ) -> dict[str, Tensor]:
        t = self._teacher_map(teacher)
        s = resize(self.adapter(self._student_map(student)), t.shape[-2:])
        return {"cwd": self.lambda_cwd * losses.cwd(s, t, self.temperature)}


class SelfAttention(FeatureMethod):
    """Karine et al. self-attention distillation (eq. 4): 14 L_SA + 3 L_KD + CE.

    L_SA (eq. 1-3) compares the channel self-attention of the student and teacher feature
    maps (default tap "encoder_out", the backbone output); L_KD (eq. 5) is CWD on the
    logits. T = 4 serves both, beta = 0.4. When the channel counts differ (R18 512 vs R101
    2048) a 1x1 conv adapter on the student (trained with it) matches them; the student map
    is resized bilinearly to the teacher's size. `distance` "norm" (eq. 3) or "mse" (the
    paper's text; see `losses.self_attention_loss`). Terms: "sa", "cwd".
    """

    name = "self_attention"
    signals = frozenset({LOGITS})

    def __init__(
        self,
        student_channels: int,
        teacher_channels: int,
        student_tap: str = DEFAULT_TAP,
        teacher_tap: str = DEFAULT_TAP,
        temperature: float = 4.0,
        beta: float = 0.4,
        lambda_sa: float = 14.0,
        lambda_kd: float = 3.0,
        distance: str = "norm",
        ce_weight: float = 1.0,
        ignore_index: int = IGNORE_INDEX,
    ) -> None:
        super().__init__(student_tap, teacher_tap, ce_weight, ignore_index)
        self.temperature = _number(self.name, "temperature", temperature, positive=True)
        self.beta = _number(self.name, "beta", beta)
        if distance not in losses.SA_DISTANCES:
            raise ConfigError(
                f"method {self.name!r}: option distance={distance!r} must be one of "
                f"{losses.SA_DISTANCES}"
            )
        self.distance = distance
        self.lambda_sa = _number(self.name, "lambda_sa", lambda_sa)
        self.lambda_kd = _number(self.name, "lambda_kd", lambda_kd)
        self.adapter = _channel_adapter(student_channels, teacher_channels)

    def forward(
        self, student: SegOutput, teacher: TeacherSignals, target: Tensor
    ) -> dict[str, Tensor]:
        t = self._teacher_map(teacher)
        s = resize(self.adapter(self._student_map(student)), t.shape[-2:])
        t_logits = teacher.require(LOGITS).detach()
        return {
            "sa": self.lambda_sa
            * losses.self_attention_loss(s, t, self.temperature, self.beta, self.distance),
            "cwd": self.lambda_kd * losses.cwd(student.logits, t_logits, self.temperature),
        }


class Translator(nn.Module):
    """He et al.'s knowledge translator: an auto-encoder on the teacher's last features.

    Encoder: three 3x3 conv-BN-ReLU, the first with stride 2; decoder: three 3x3
    transposed-conv-BN-ReLU, the last with stride 2; every layer has `channels` channels
    (the teacher's). The encoder output E(F_t) [B, C, ceil(h/2), ceil(w/2)] is the compact
    knowledge: from an OS8 teacher it lands at OS16, the student's resolution.
    `trained` (a buffer, so it is checkpointed) says whether stage 1 has run.
    """

    trained: Tensor

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.encoder = nn.Sequential(
            _conv_bn_relu(channels, channels, stride=2),
            _conv_bn_relu(channels, channels),
            _conv_bn_relu(channels, channels),
        )
        self.decoder = nn.Sequential(
            _conv_bn_relu(channels, channels, transposed=True),
            _conv_bn_relu(channels, channels, transposed=True),
            _conv_bn_relu(channels, channels, stride=2, transposed=True),
        )
        self.register_buffer("trained", torch.tensor(False))

    def encode(self, features: Tensor) -> Tensor:
        """[B, C, h, w] teacher features -> [B, C, ceil(h/2), ceil(w/2)] compact knowledge."""
        return self.encoder(features)

    def forward(self, features: Tensor) -> tuple[Tensor, Tensor]:
        """Returns (code, reconstruction); the reconstruction has the input's size."""
        code = self.encode(features)
        x = self.decoder[:-1](code)
        last = cast(nn.Sequential, self.decoder[-1])  # transposed conv, BN, ReLU
        # output_size picks the output padding that restores odd as well as even sizes.
        x = last[0](x, output_size=features.shape[-2:])
        return code, last[1:](x)

    def reconstruction_loss(self, features: Tensor, sparsity_weight: float = 1e-7) -> Tensor:
        """He et al. eq. 1 on a batch of teacher features [B, C, h, w]."""
        code, reconstruction = self(features)
        return losses.reconstruction_loss(reconstruction, features, code, sparsity_weight)


def train_translator(
    teacher_features: Iterable[Tensor],
    translator: Translator,
    epochs: int = 1,
    lr: float = 0.1,
    momentum: float = 0.9,
    weight_decay: float = 1e-4,
    sparsity_weight: float = 1e-7,
) -> list[float]:
    """Stage 1 of He et al.: train the translator on the frozen teacher's features.

    teacher_features: re-iterable batches [B, C, h, w] of the teacher tap (a list or a
    DataLoader-backed iterable; a generator only lasts one epoch). One epoch by default as
    in the paper; SGD with the torchdistill port's settings (lr 0.1, momentum 0.9, weight
    decay 1e-4). Leaves the translator frozen (no grad, eval mode) and marked trained.
    Returns the loss of every step.
    """
    device = next(translator.parameters()).device
    translator.requires_grad_(True)
    translator.train()
    optimizer = torch.optim.SGD(
        translator.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay
    )
    history: list[float] = []
    try:
        for epoch in range(epochs):
            steps = 0
            for features in teacher_features:
                loss = translator.reconstruction_loss(features.detach().to(device), sparsity_weight)
                if not torch.isfinite(loss):
                    raise TrainingError(f"translator loss is {loss.item()} at step {steps}")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                history.append(loss.item())
                steps += 1
            if steps == 0:
                raise TrainingError(
                    f"translator training got no feature batch in epoch {epoch + 1}; pass a "
                    "re-iterable (a list or a DataLoader), not a generator"
                )
    finally:
        # Stage 2 must see the translator frozen and without stale gradients.
        optimizer.zero_grad(set_to_none=True)
        translator.requires_grad_(False)
        translator.eval()
    translator.trained.fill_(True)
    return history


class Adaptation(FeatureMethod):
    """He et al. knowledge adaptation, stage 2: 50 L_adapt + 1 L_aff + CE.

    The student tap goes through the adapter (three 3x3 conv-BN-ReLU to the teacher's
    channels, trained with the student) and is resized bilinearly to the size of the
    translated teacher knowledge E(F_t) (the frozen translator's encoder). L_adapt is eq. 2
    (`losses.adaptation_loss`), L_aff eq. 4 between the affinities of the adapted student
    features and of E(F_t) (`losses.affinity_loss`). Stage 1 (`train_translator`) must run
    first. Terms: "adapt", "affinity".
    """

    name = "adaptation"

    def __init__(
        self,
        student_channels: int,
        teacher_channels: int,
        student_tap: str = DEFAULT_TAP,
        teacher_tap: str = DEFAULT_TAP,
        lambda_adapt: float = 50.0,
        lambda_affinity: float = 1.0,
        ce_weight: float = 1.0,
        ignore_index: int = IGNORE_INDEX,
    ) -> None:
        super().__init__(student_tap, teacher_tap, ce_weight, ignore_index)
        self.lambda_adapt = _number(self.name, "lambda_adapt", lambda_adapt)
        self.lambda_affinity = _number(self.name, "lambda_affinity", lambda_affinity)
        self.translator = Translator(teacher_channels)
        self.translator.requires_grad_(False)
        self.translator.eval()
        self.adapter = nn.Sequential(
            _conv_bn_relu(student_channels, teacher_channels),
            _conv_bn_relu(teacher_channels, teacher_channels),
            _conv_bn_relu(teacher_channels, teacher_channels),
        )

    def train(self, mode: bool = True) -> Adaptation:
        super().train(mode)
        # The translator is frozen in stage 2: its BN statistics must not move either.
        self.translator.eval()
        return self

    def forward(
        self, student: SegOutput, teacher: TeacherSignals, target: Tensor
    ) -> dict[str, Tensor]:
        if not bool(self.translator.trained):
            raise TrainingError(
                "method 'adaptation': the translator is untrained; run stage 1 "
                "(methods.train_translator) on the teacher's features first"
            )
        with torch.no_grad():
            code = self.translator.encode(self._teacher_map(teacher))
        s = resize(self.adapter(self._student_map(student)), code.shape[-2:])
        return {
            "adapt": self.lambda_adapt * losses.adaptation_loss(s, code),
            "affinity": self.lambda_affinity * losses.affinity_loss(s, code),
        }


class JAKD(PixelMethod):
    """NfS-SegNet joint and auxiliary KD (eq. 1-2) on the output and every aux output.

    The teacher's mean_probs are the soft labels for the final logits and for each
    `SegOutput.aux_logits` map (the teacher exposes no intermediate outputs). alpha = 0.5;
    aux terms are multiplied by `aux_weight`. Terms: "out", "aux_<name>".
    """

    name = "ja_kd"
    signals = frozenset({"mean_probs"})

    def __init__(
        self,
        alpha: float = 0.5,
        aux_weight: float = 1.0,
        distill_void: bool = True,
        ce_weight: float = 1.0,
        ignore_index: int = IGNORE_INDEX,
    ) -> None:
        super().__init__(distill_void=distill_void, ce_weight=ce_weight, ignore_index=ignore_index)
        self.alpha = _number(self.name, "alpha", alpha)
        self.aux_weight = _number(self.name, "aux_weight", aux_weight)

    def _term(self, logits: Tensor, teacher: TeacherSignals, valid: Tensor | None) -> Tensor:
        probs = teacher.require("mean_probs").detach()
        return losses.ja_kd(logits, probs, self.alpha, valid)

    def forward(
        self,
        student: SegOutput,
        teacher: TeacherSignals,
        target: Tensor,
        teacher_valid: Tensor | None = None,
    ) -> dict[str, Tensor]:
        valid = self._valid(target, teacher_valid)
        terms = {"out": self._term(student.logits, teacher, valid)}
        for aux_name, aux_logits in student.aux_logits.items():
            terms[f"aux_{aux_name}"] = self.aux_weight * self._term(aux_logits, teacher, valid)
        return terms


class UKD(JAKD):
    """NfS-SegNet uncertainty-aware KD (eq. 3): JA-KD where the teacher's MC-dropout
    variance is above its median (per image by default, `median_over`)."""

    name = "ukd"
    signals = frozenset({"mean_probs", "variance"})

    def __init__(
        self,
        alpha: float = 0.5,
        aux_weight: float = 1.0,
        median_over: str = "image",
        distill_void: bool = True,
        ce_weight: float = 1.0,
        ignore_index: int = IGNORE_INDEX,
    ) -> None:
        super().__init__(alpha, aux_weight, distill_void, ce_weight, ignore_index)
        if median_over not in losses.MEDIAN_SCOPES:
            raise ConfigError(
                f"method {self.name!r}: option median_over={median_over!r} must be one of "
                f"{list(losses.MEDIAN_SCOPES)}"
            )
        self.median_over = median_over

    def forward(
        self,
        student: SegOutput,
        teacher: TeacherSignals,
        target: Tensor,
        teacher_valid: Tensor | None = None,
    ) -> dict[str, Tensor]:
        if teacher_valid is not None:
            variance = self._fill_invalid(teacher.require("variance").detach(), teacher_valid)
            teacher = dataclasses.replace(teacher, variance=variance)
        return super().forward(student, teacher, target, teacher_valid)

    def _fill_invalid(self, variance: Tensor, teacher_valid: Tensor) -> Tensor:
        """The variance [B, 1, H, W] with the pixels outside `teacher_valid` (a cache's crop
        padding, no teacher output there) set to the median of the valid ones (per image or
        over the batch, as `median_over`). Adding copies of a set's median leaves its median
        unchanged, so the threshold is the median of the valid pixels, and the filled
        pixels are not strictly above it (they are masked out of the loss anyway)."""
        invalid = ~teacher_valid[:, None]
        nan_padded = variance.masked_fill(invalid, float("nan"))
        if self.median_over == "image":
            median = nan_padded.flatten(1).nanmedian(dim=1).values.view(-1, 1, 1, 1)
        else:
            median = nan_padded.nanmedian()
        return torch.where(invalid, median, variance)

    def _term(self, logits: Tensor, teacher: TeacherSignals, valid: Tensor | None) -> Tensor:
        probs = teacher.require("mean_probs").detach()
        variance = teacher.require("variance").detach()
        return losses.u_kd(logits, probs, variance, self.alpha, valid, self.median_over)


class MethodSet(nn.Module):
    """Methods combined into one loss.

    methods: (name, method, weight) triples; every term of a method is multiplied by its
    weight. The label cross-entropy is added once, as "task/ce", with weight `ce_weight`;
    by default the largest `weight * method.ce_weight` of the set (1 with no method, i.e.
    plain supervised training), so a method used alone gets its paper's total loss.
    `aux_ce_weight` > 0 adds the label cross-entropy of each auxiliary output
    (`SegOutput.aux_logits`, deep supervision: `model.aux_loss_weight`) as
    "task/aux_ce_<level>" with that weight.
    forward returns {"loss": total, "task/ce": ..., "<name>/<term>": ...}, every value a
    weighted scalar, the non-"loss" ones summing to "loss". Its optional `teacher_valid`
    (bool [B, H, W], pixels where the teacher's signals exist) reaches the pixel-wise
    methods; a teacher cache only serves signals that no other method reads
    (`pixel_needs`), so the others always get signals that exist everywhere.
    """

    def __init__(
        self,
        methods: Sequence[tuple[str, Method, float]] = (),
        ce_weight: float | None = None,
        ignore_index: int = IGNORE_INDEX,
        aux_ce_weight: float = 0.0,
    ) -> None:
        super().__init__()
        self.methods = nn.ModuleDict()
        self.weights: dict[str, float] = {}
        for name, method, weight in methods:
            if name in self.methods:
                raise ConfigError(f"distillation method {name!r} is listed twice")
            self.methods[name] = method
            self.weights[name] = _number(name, "weight", weight)
        if ce_weight is None:
            ce_weight = max(
                (self.weights[n] * m.ce_weight for n, m in self.named_methods()), default=1.0
            )
        self.ce_weight = _number("task", "ce_weight", ce_weight)
        self.aux_ce_weight = _number("task", "aux_ce_weight", aux_ce_weight)
        if self.ce_weight == 0 and self.aux_ce_weight == 0 and not self.methods:
            raise ConfigError("nothing to train: no distillation method and a CE weight of 0")
        self.ignore_index = ignore_index

    def named_methods(self) -> list[tuple[str, Method]]:
        """(name, method) in the configured order (the ModuleDict holds them as Modules)."""
        return [(name, cast(Method, method)) for name, method in self.methods.items()]

    @property
    def needs(self) -> frozenset[str]:
        return frozenset().union(*(m.needs for _, m in self.named_methods()))

    def check_student(self, student: SegOutput) -> None:
        """Every method's `check_student` on one forward pass of the student, and that it
        has the auxiliary outputs `aux_ce_weight` trains."""
        if self.aux_ce_weight > 0 and not student.aux_logits:
            raise ConfigError(
                f"model.aux_loss_weight={self.aux_ce_weight} needs a network with "
                "auxiliary heads (model.aux_heads: true); this one has none"
            )
        for _, method in self.named_methods():
            method.check_student(student)

    @property
    def pixel_needs(self) -> frozenset[str]:
        """The teacher signals read by pixel-wise methods only (kd, holder, dudes, ja_kd, ukd),
        which can skip pixels without them (`teacher_valid`): what a teacher cache may hold."""
        pixel, other = self._needs_by_kind()
        return pixel - other

    @property
    def pixel_needs_read_online(self) -> frozenset[str]:
        """The signals pixel-wise methods read that another method reads too: those come
        from the online teacher, so a cache does not hold them."""
        pixel, other = self._needs_by_kind()
        return pixel & other

    def _needs_by_kind(self) -> tuple[frozenset[str], frozenset[str]]:
        """(what pixel-wise methods read, what the others read)."""
        pixel = [m.needs for _, m in self.named_methods() if isinstance(m, PixelMethod)]
        other = [m.needs for _, m in self.named_methods() if not isinstance(m, PixelMethod)]
        return frozenset().union(*pixel), frozenset().union(*other)

    @property
    def teacher_taps(self) -> frozenset[str]:
        return frozenset().union(*(m.teacher_taps for _, m in self.named_methods()))

    @property
    def student_taps(self) -> frozenset[str]:
        return frozenset().union(*(m.student_taps for _, m in self.named_methods()))

    def translators_to_train(self) -> list[tuple[str, str, Translator]]:
        """(method name, teacher tap, translator) of every Adaptation awaiting stage 1."""
        return [
            (name, m.teacher_tap, m.translator)
            for name, m in self.named_methods()
            if isinstance(m, Adaptation) and not bool(m.translator.trained)
        ]

    def forward(
        self,
        student: SegOutput,
        teacher: TeacherSignals,
        target: Tensor,
        teacher_valid: Tensor | None = None,
    ) -> dict[str, Tensor]:
        terms: dict[str, Tensor] = {}
        if self.ce_weight > 0:
            ce = losses.cross_entropy(student.logits, target, self.ignore_index)
            terms["task/ce"] = self.ce_weight * ce
        if self.aux_ce_weight > 0:
            for level, aux_logits in student.aux_logits.items():
                aux_ce = losses.cross_entropy(aux_logits, target, self.ignore_index)
                terms[f"task/aux_ce_{level}"] = self.aux_ce_weight * aux_ce
        for name, method in self.named_methods():
            if isinstance(method, PixelMethod):
                method_terms = method(student, teacher, target, teacher_valid)
            else:
                method_terms = method(student, teacher, target)
            for term, value in method_terms.items():
                terms[f"{name}/{term}"] = self.weights[name] * value
        # sum(), not stack(): under autocast the terms may differ in dtype.
        total = cast(Tensor, sum(terms.values()))  # never 0: __init__ refuses an empty set
        return {"loss": total, **terms}


METHODS: dict[str, type[Method]] = {
    cls.name: cls for cls in (KD, Holder, DUDES, SelfAttention, Adaptation, JAKD, UKD, CWD)
}
# The methods whose terms average per-pixel teacher signals: they may read a teacher cache
# and take `distill_void` (the others compare feature taps).
PIXEL_METHODS = tuple(name for name, cls in METHODS.items() if issubclass(cls, PixelMethod))
_SPEC_KEYS = ("name", "weight", "options")
# Constructor arguments that come from the model, not from the user's options.
_BUILT_ARGS = ("student_channels", "teacher_channels", "ignore_index")


def _spec_dict(spec: Any, where: str) -> dict[str, Any]:
    if dataclasses.is_dataclass(spec) and not isinstance(spec, type):
        spec = dataclasses.asdict(spec)
    if not isinstance(spec, Mapping):
        raise ConfigError(f"{where}: expected a mapping with keys {list(_SPEC_KEYS)}, got {spec!r}")
    for key in spec:
        if key not in _SPEC_KEYS:
            raise ConfigError(
                f"{where}.{key}: unknown key{did_you_mean(key, _SPEC_KEYS)} "
                f"(valid: {list(_SPEC_KEYS)})"
            )
    return dict(spec)


def _tap_channels(
    tap: str, channels: Mapping[str, int] | None, num_classes: int, where: str, side: str
) -> int:
    if tap == LOGITS:
        return num_classes
    known = dict(channels or {})
    if tap not in known:
        raise ConfigError(
            f"{where}.options.{side}_tap: the {side} has no feature tap {tap!r}"
            f"{did_you_mean(tap, known)} (known: {sorted(known)})"
        )
    return known[tap]


def build_methods(
    specs: Sequence[Any],
    num_classes: int,
    student_channels: Mapping[str, int] | None = None,
    teacher_channels: Mapping[str, int] | None = None,
    ignore_index: int = IGNORE_INDEX,
    ce_weight: float | None = None,
    aux_ce_weight: float = 0.0,
) -> MethodSet:
    """A MethodSet from config entries `{name, weight (default 1), options (default {})}`.

    student_channels / teacher_channels map each feature tap name to its channel count
    ("logits" has `num_classes`). Unknown names, keys or options raise a ConfigError naming
    them with the closest valid one; `ce_weight` overrides the set's CE weight;
    `aux_ce_weight` is the auxiliary outputs' (`MethodSet`).
    """
    built: list[tuple[str, Method, float]] = []
    for index, raw in enumerate(specs):
        where = f"distill.methods[{index}]"
        spec = _spec_dict(raw, where)
        name = spec.get("name")
        if not isinstance(name, str) or name not in METHODS:
            raise ConfigError(
                f"{where}.name: unknown method {name!r}{did_you_mean(name, METHODS)} "
                f"(valid: {sorted(METHODS)})"
            )
        cls = METHODS[name]
        params = inspect.signature(cls).parameters
        allowed = [p for p in params if p not in _BUILT_ARGS]
        options = spec.get("options") or {}
        if not isinstance(options, Mapping):
            raise ConfigError(f"{where}.options: expected a mapping, got {options!r}")
        for key in options:
            if key not in allowed:
                raise ConfigError(
                    f"{where}.options.{key}: not an option of method {name!r}"
                    f"{did_you_mean(key, allowed)} (valid: {allowed})"
                )
        kwargs = dict(options, ignore_index=ignore_index)
        for side, channels in (("student", student_channels), ("teacher", teacher_channels)):
            if f"{side}_channels" in params:
                tap = options.get(f"{side}_tap", params[f"{side}_tap"].default)
                kwargs[f"{side}_channels"] = _tap_channels(tap, channels, num_classes, where, side)
        built.append((name, cls(**kwargs), spec.get("weight", 1.0)))
    return MethodSet(
        built, ce_weight=ce_weight, ignore_index=ignore_index, aux_ce_weight=aux_ce_weight
    )

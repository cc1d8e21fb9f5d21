"""The two values that flow between models, teachers and distillation methods.

Everything downstream of a network reads one of these two dataclasses, never module
internals, so a method can be written and tested without knowing which network made them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

# Names a Method may put in its `needs` set; a teacher computes only those.
SIGNAL_NAMES = frozenset(
    {"mean_probs", "std", "pred_std", "variance", "entropy", "mutual_info", "logits", "features"}
)


@dataclass
class SegOutput:
    """What a segmenter returns.

    logits:      [B, C, H, W] class scores at the input resolution.
    uncertainty: [B, K, H, W] in [0, 1] (K = 1 for the DUDES `scalar` head, K = C for the
                 Holder `per_class` head), or None when the network has no uncertainty head.
    features:    named feature taps [B, Ci, hi, wi] that feature-level methods read
                 (e.g. "encoder_out", "decoder_out"); no string paths into modules.
    aux_logits:  named auxiliary class scores [B, C, H, W] at the input resolution (used by
                 JA-KD on intermediate outputs); empty when the network has no aux heads.
    """

    logits: Tensor
    uncertainty: Tensor | None = None
    features: dict[str, Tensor] = field(default_factory=dict)
    aux_logits: dict[str, Tensor] = field(default_factory=dict)


@dataclass
class TeacherSignals:
    """Per-pixel statistics of a teacher; a field is None unless it was asked for.

    mean_probs:  [B, C, H, W] mean class probabilities over members / MC samples.
    std:         [B, C, H, W] per-class std of the probabilities over members (Holder eq. 3;
                 population std by default).
    pred_std:    [B, 1, H, W] std of the probability of the class predicted by the mean
                 (DUDES).
    variance:    [B, 1, H, W] mean over classes of the per-class variance (NfS-SegNet U-KD).
    entropy:     [B, 1, H, W] predictive entropy of mean_probs (nats).
    mutual_info: [B, 1, H, W] entropy of the mean minus mean entropy of the members.
    logits:      [B, C, H, W] logits of a single teacher, or log(mean_probs) for an ensemble.
    features:    named feature taps of the (first) teacher network.
    """

    mean_probs: Tensor | None = None
    std: Tensor | None = None
    pred_std: Tensor | None = None
    variance: Tensor | None = None
    entropy: Tensor | None = None
    mutual_info: Tensor | None = None
    logits: Tensor | None = None
    features: dict[str, Tensor] = field(default_factory=dict)

    def require(self, name: str) -> Tensor:
        """The signal `name`, or a clear error saying which method forgot to ask for it."""
        value = getattr(self, name)
        if value is None:
            raise KeyError(
                f"teacher signal {name!r} was not computed; add it to the method's `needs`"
            )
        return value

    def to(self, device: torch.device | str) -> TeacherSignals:
        moved = {
            k: (v.to(device) if isinstance(v, Tensor) else v)
            for k, v in self.__dict__.items()
            if k != "features"
        }
        return TeacherSignals(**moved, features={k: v.to(device) for k, v in self.features.items()})

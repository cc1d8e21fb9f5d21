"""Is an image unlike the training data? A decision per image, for deployment.

Holder & Shafique (5.3) score a whole image by aggregating its pixel uncertainty map
(`segdistill.metrics.ood.image_scores`: min, mean, median, max, (median + min) / max), and
`segdistill evaluate` measures how well each aggregator separates shifted sets from the
test split (AUROC). A deployed model needs a decision instead: flag the image when its
score is above a threshold. `ImageOODDetector` holds that threshold, set on in-distribution
reference images (e.g. the validation split) so that at most a chosen share `fpr` of them
would be flagged: the false-alarm rate on data like the reference, the one number a user
can fix without having seen the shifts to come.

The threshold is the smallest reference score that at most `floor(fpr * N)` of the N
reference scores exceed (`threshold_at_fpr`); an image is flagged when its score is
strictly above it. The detector belongs to one model (its weights, by fingerprint), its
uncertainty, the map its scores aggregate (`Prediction.ood_map`) and input size (a score
is only comparable to scores of the same map), so it records them and `check_model`
refuses another. It also records the sizes of the reference
images: an image of another size (without a fixed `resize_to`) gives the network another
view of the scene, and its score another distribution, so `other_size` names it. It is
saved as JSON (`save`, `load`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

from segdistill.defaults import AGGREGATORS, DEFAULT_AGGREGATOR, DEFAULT_FPR
from segdistill.errors import ConfigError
from segdistill.jsonfiles import write_json
from segdistill.metrics.ood import image_scores
from segdistill.predictor import Predictor

# A product like 0.29 * 100 comes out as 28.999999999999996; the share is meant exactly.
_FPR_ROUNDING = 1e-9


def check_fpr(fpr: float) -> float:
    """`fpr` if it is a share in [0, 1), else ConfigError."""
    if not 0.0 <= fpr < 1.0:
        raise ConfigError(f"the OOD false-alarm rate must be in [0, 1), got {fpr}")
    return fpr


def threshold_at_fpr(reference_scores: Sequence[float] | np.ndarray, fpr: float) -> float:
    """The smallest reference score that at most floor(fpr * N) of the N scores exceed.

    reference_scores: [N] finite scores of in-distribution images (higher = more OOD);
    fpr in [0, 1). Flagging the scores strictly above the result flags at most that many
    references (fewer when scores tie at the threshold); fpr = 0 gives the largest score.
    """
    check_fpr(fpr)
    scores = np.sort(np.asarray(reference_scores, dtype=np.float64).ravel())
    if scores.size == 0:
        raise ValueError("no reference scores: the threshold needs in-distribution images")
    if not np.isfinite(scores).all():
        raise ValueError(f"reference scores must be finite, got {scores[~np.isfinite(scores)]}")
    allowed = math.floor(fpr * scores.size + _FPR_ROUNDING)
    return float(scores[scores.size - 1 - allowed])


@dataclass(frozen=True)
class ImageOODDetector:
    """Flags an image when `aggregator` of its uncertainty map is above `threshold`.

    threshold: from `reference_images` in-distribution images at false-alarm rate `fpr`
    (`threshold_at_fpr`). model (its name, for people), weights (`Predictor.fingerprint`),
    kind, uncertainty_source, passes: the `Predictor` it was fitted for (an MC-dropout std
    from 8 passes is not one from 32); resize_to: the [H, W] the images were resized to for
    the network (None: full size). The reference images' scores are kept, so that `load`
    can check the threshold follows from them. reference_sizes: the distinct [H, W] of the
    reference images (None in files written before it was recorded). ood_source: the map
    the scores aggregate (`Predictor.ood_source`); None in files written before it was
    recorded, whose scores aggregate the uncertainty map.
    """

    aggregator: str
    threshold: float
    fpr: float
    reference_images: int
    model: str
    weights: str
    kind: str
    uncertainty_source: str
    passes: int
    resize_to: list[int] | None
    reference_scores: list[float]
    reference_sizes: list[list[int]] | None = None
    ood_source: str | None = None

    @classmethod
    def fit(
        cls,
        reference_scores: Sequence[float] | np.ndarray | Tensor,
        predictor: Predictor,
        *,
        aggregator: str = DEFAULT_AGGREGATOR,
        fpr: float = DEFAULT_FPR,
        resize_to: Sequence[int] | None = None,
        reference_sizes: Sequence[Sequence[int]] | None = None,
    ) -> ImageOODDetector:
        """The detector for `predictor` whose threshold flags at most `fpr` of
        `reference_scores` ([N], the `aggregator` scores of in-distribution images, whose
        (H, W) are `reference_sizes`, any order and repeats)."""
        check_aggregator(aggregator)
        scores = [float(s) for s in reference_scores]
        return cls(
            aggregator=aggregator,
            threshold=threshold_at_fpr(scores, fpr),
            fpr=fpr,
            reference_images=len(scores),
            model=predictor.name,
            weights=predictor.fingerprint(),
            kind=predictor.kind,
            uncertainty_source=predictor.uncertainty_source,
            passes=predictor.passes,
            resize_to=None if resize_to is None else [int(v) for v in resize_to],
            reference_scores=scores,
            reference_sizes=None
            if reference_sizes is None
            else [list(hw) for hw in sorted({(int(h), int(w)) for h, w in reference_sizes})],
            ood_source=predictor.ood_source,
        )

    @property
    def scored_map(self) -> str:
        """What the scores aggregate, in words: "uncertainty", or the map that is not the
        uncertainty (a per-class head's mean over the classes)."""
        return scored_map(self.to_json())

    def other_size(self, size: Sequence[int]) -> str | None:
        """Why the flag of an image of `size` (H, W) is not calibrated: a sentence naming
        the reference sizes when the images are not resized to `resize_to` and `size` is
        none of them; None otherwise."""
        if self.resize_to is not None or self.reference_sizes is None:
            return None
        if [int(v) for v in size] in self.reference_sizes:
            return None
        known = ", ".join(f"{h}x{w}" for h, w in self.reference_sizes[:4])
        more = " ..." if len(self.reference_sizes) > 4 else ""
        return (
            f"{size[0]}x{size[1]} images were not among the OOD references ({known}{more} "
            "HxW): their scores, and so their flags, are not calibrated; fit the detector on "
            "images of this size, or give both runs the same --size"
        )

    def scores(self, ood_maps: Tensor) -> Tensor:
        """[B, 1, H, W] OOD maps (`Prediction.ood_map`) -> float64 [B] scores by the
        detector's aggregator."""
        return image_scores(ood_maps)[self.aggregator]

    def flags(self, scores: Tensor | np.ndarray | float) -> np.ndarray:
        """Scores ([B] or one) -> bool array, True where the image is flagged as OOD.
        ValueError for a NaN score (a map without a valid pixel, or not finite): it can be
        called neither in nor out of distribution."""
        values = scores.detach().cpu().numpy() if isinstance(scores, Tensor) else scores
        values = np.asarray(values, dtype=np.float64)
        if np.isnan(values).any():
            bad = np.flatnonzero(np.isnan(values)).tolist()
            raise ValueError(f"OOD scores {bad[:10]} are NaN: no image to flag there")
        return values > self.threshold

    def check_model(
        self, predictor: Predictor, resize_to: Sequence[int] | None, where: str | Path
    ) -> None:
        """ConfigError naming `where` (e.g. the detector's file) when the predictor, its
        uncertainty or the input size differ from those the detector was fitted for."""
        given: dict[str, Any] = {
            "weights": predictor.fingerprint(),
            "kind": predictor.kind,
            "uncertainty_source": predictor.uncertainty_source,
            "ood_source": predictor.ood_source,
            "passes": predictor.passes,
            "resize_to": None if resize_to is None else [int(v) for v in resize_to],
        }
        fitted_for = {"ood_source": self.ood_source or self.uncertainty_source}
        differ = []
        for key, value in given.items():
            fitted = fitted_for.get(key, getattr(self, key))
            if fitted != value:
                if key == "weights":  # a SHA-256's first digits tell two apart
                    fitted, value = f"{fitted[:12]}...", f"{value[:12]}..."
                differ.append(f"{key} {fitted!r} (given {value!r})")
        if differ:
            raise ConfigError(
                f"{where}: this OOD detector was fitted for another model or input size: "
                f"{'; '.join(differ)}; fit one for this model (segdistill predict --ood-reference)"
            )

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> dict[str, Any]:
        """`to_json` without the reference scores: what a results file repeats."""
        return {k: v for k, v in self.to_json().items() if k != "reference_scores"}

    def save(self, path: Path) -> None:
        write_json(path, self.to_json())

    @classmethod
    def load(cls, path: Path) -> ImageOODDetector:
        """A detector saved by `save`; ConfigError naming the file and the key when it is
        missing, not JSON, or holds a missing, unknown or invalid key."""
        try:
            document = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise ConfigError(f"{path}: no such OOD detector file") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ConfigError(f"{path}: not an OOD detector file (JSON): {error}") from None
        if not isinstance(document, dict):
            raise ConfigError(f"{path}: an OOD detector file holds a JSON object")
        names = [f.name for f in fields(cls)]
        # These came later: older files lack them.
        later = ("reference_sizes", "ood_source")
        missing = [name for name in names if name not in document and name not in later]
        unknown = sorted(set(document) - set(names))
        if missing or unknown:
            raise ConfigError(
                f"{path}: not an OOD detector file: missing keys {missing}, unknown keys {unknown}"
            )
        _check_types(document, path)
        detector = cls(**document)
        expected = threshold_at_fpr(detector.reference_scores, detector.fpr)
        if detector.threshold != expected or detector.reference_images != len(
            detector.reference_scores
        ):
            raise ConfigError(
                f"{path}: threshold {detector.threshold} and reference_images "
                f"{detector.reference_images} do not follow from its reference_scores at fpr "
                f"{detector.fpr} (threshold {expected}, {len(detector.reference_scores)} "
                "images): the file was edited; fit it again"
            )
        return detector


def scored_map(detector: dict[str, Any]) -> str:
    """`ImageOODDetector.scored_map` of a detector's JSON (or its summary)."""
    source = detector.get("ood_source")
    return "uncertainty" if source in (None, detector["uncertainty_source"]) else str(source)


def check_aggregator(aggregator: str) -> str:
    if aggregator not in AGGREGATORS:
        raise ConfigError(f"unknown OOD aggregator {aggregator!r}; choose from {AGGREGATORS}")
    return aggregator


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_types(document: dict[str, Any], path: Path) -> None:
    def fail(key: str, what: str) -> ConfigError:
        got = repr(document[key])
        got = got if len(got) <= 80 else f"{got[:77]}..."  # reference_scores: 100s of numbers
        return ConfigError(f"{path}: key {key!r} must be {what}, got {got}")

    for key in ("model", "weights", "kind", "uncertainty_source", "aggregator"):
        if not isinstance(document[key], str):
            raise fail(key, "a string")
    if document["aggregator"] not in AGGREGATORS:
        raise fail("aggregator", f"one of {AGGREGATORS}")
    for key in ("threshold", "fpr"):
        if not _is_number(document[key]):
            raise fail(key, "a number")
    if not 0.0 <= document["fpr"] < 1.0:
        raise fail("fpr", "in [0, 1)")
    for key in ("reference_images", "passes"):
        if isinstance(document[key], bool) or not isinstance(document[key], int):
            raise fail(key, "an integer")
    scores = document["reference_scores"]
    if (
        not isinstance(scores, list)
        or not scores
        or not all(_is_number(s) and math.isfinite(s) for s in scores)
    ):
        raise fail("reference_scores", "a non-empty list of finite numbers")

    def is_size(value: Any) -> bool:
        return (
            isinstance(value, list)
            and len(value) == 2
            and all(type(v) is int and v > 0 for v in value)
        )

    if document["resize_to"] is not None and not is_size(document["resize_to"]):
        raise fail("resize_to", "null or [H, W] (positive integers)")
    if not isinstance(document.get("ood_source", ""), str | None):
        raise fail("ood_source", "null or a string")
    sizes = document.get("reference_sizes")
    if sizes is not None and not (isinstance(sizes, list) and all(map(is_size, sizes))):
        raise fail("reference_sizes", "null or a list of [H, W] (positive integers)")

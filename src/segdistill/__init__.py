"""segdistill: distil segmentation teachers into fast students that report their uncertainty.

The names most code needs, importable from the package (none of them imports Lightning):

- `load_predictor(source)`: a trained student, baseline, ensemble directory or MC-dropout
  checkpoint -> `Predictor`, whose `predict(images)` gives a `Prediction` (`probs` [B, C,
  H, W], `uncertainty` [B, 1, H, W]).
- `build_segmenter`, `Segmenter`: the networks; `Ensemble`, `MCDropout`: the teachers,
  whose `signals(images, needs)` give mean and std maps (`TeacherSignals`).
- `SegmentationEvaluator`: streaming mIoU, calibration and uncertainty-quality metrics.
- `ImageOODDetector`: flags an image as unlike the training data when its aggregated
  uncertainty is above a threshold set on in-distribution images.
- `load_config`, `SegConfig`: the training config. Training itself is
  `segdistill.train.train(cfg)` (it imports Lightning); the losses of the papers are in
  `segdistill.losses`, the methods that combine them in `segdistill.methods`.
"""

__version__ = "0.1.0"

from typing import TYPE_CHECKING, Any

# The names load on first use (PEP 562), so that `import segdistill.<module>`, and with it
# `segdistill --help`, does not wait for torch.
_LAZY_NAMES = {
    "Ensemble": "segdistill.models.teachers",
    "ImageOODDetector": "segdistill.ood_detector",
    "MCDropout": "segdistill.models.teachers",
    "Prediction": "segdistill.predictor",
    "Predictor": "segdistill.predictor",
    "SegConfig": "segdistill.config",
    "SegmentationEvaluator": "segdistill.metrics",
    "Segmenter": "segdistill.models",
    "TeacherSignals": "segdistill.outputs",
    "build_segmenter": "segdistill.models",
    "load_config": "segdistill.config",
    "load_predictor": "segdistill.predictor",
}

if TYPE_CHECKING:
    from segdistill.config import SegConfig, load_config
    from segdistill.metrics import SegmentationEvaluator
    from segdistill.models import Segmenter, build_segmenter
    from segdistill.models.teachers import Ensemble, MCDropout
    from segdistill.ood_detector import ImageOODDetector
    from segdistill.outputs import TeacherSignals
    from segdistill.predictor import Prediction, Predictor, load_predictor


def __getattr__(name: str) -> Any:
    if name not in _LAZY_NAMES:
        raise AttributeError(f"module 'segdistill' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(_LAZY_NAMES[name]), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY_NAMES])


__all__ = [
    "Ensemble",
    "ImageOODDetector",
    "MCDropout",
    "Prediction",
    "Predictor",
    "SegConfig",
    "SegmentationEvaluator",
    "Segmenter",
    "TeacherSignals",
    "__version__",
    "build_segmenter",
    "load_config",
    "load_predictor",
]

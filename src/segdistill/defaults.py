"""File names, choices and defaults that the command line shows in its help.

They live here, in a module that imports nothing, so that `segdistill --help` and a
mistyped argument answer at once instead of after torch loads (about 2 s). Every module
that uses one imports it from here.
"""

# Lightning's full training state in a run directory, which `--resume` continues from.
RESUME_CHECKPOINT = "checkpoints/last.ckpt"
# The metrics of `segdistill evaluate --out DIR`, and of an experiment's run directory.
RESULTS_FILE = "results.json"

# Stochastic passes of an MC-dropout teacher or model (NfS-SegNet U-KD uses 5, its configs say so).
DEFAULT_MC_SAMPLES = 8

# How an uncertainty map becomes one image-level OOD score (Holder & Shafique 5.3).
AGGREGATORS = ("min", "mean", "median", "max", "median_plus_min_over_max")
# A saved `ImageOODDetector`, and the aggregator and false-alarm rate it is fitted with
# unless told otherwise.
DETECTOR_FILE = "ood_detector.json"
DEFAULT_AGGREGATOR = "mean"
DEFAULT_FPR = 0.05

# What `segdistill predict` can write per image, one folder each (`segdistill.predict`).
OUTPUT_KINDS = (
    "pred",
    "seg",
    "overlay",
    "uncertainty",
    "uncertainty16",
    "accuracy",
    "distrust",
    "panel",
)
# The uncertainty that the heat maps draw at full colour.
UNCERTAINTY_VMAX = 0.5
# The uncertainty of a network without an uncertainty head or members: on another scale
# (about 0.1-0.9) than the std of the class probabilities the others give (0-0.5).
SOFTMAX_UNCERTAINTY = "1 - max softmax"
# The scale of every other measure: pred_std (ensembles, MC dropout) and the student heads
# trained to predict it.
STD_SCALE = "pred_std and the heads trained on it"


def uncertainty_scale(source: str) -> str:
    """The scale of an uncertainty measure (a model's `uncertainty_source`): values of one
    scale may be compared and subtracted (DUDES Table 2), of two scales not."""
    return SOFTMAX_UNCERTAINTY if source == SOFTMAX_UNCERTAINTY else STD_SCALE


# `segdistill export`: the file formats, what the exported graph returns, and the largest
# difference from the PyTorch model that its check accepts.
EXPORT_FORMATS = ("onnx", "torchscript")
EXPORT_OUTPUTS = ("probs", "labels")
EXPORT_ATOL = 1e-4

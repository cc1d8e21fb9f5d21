"""Networks: encoders, decoders, heads and the Segmenter that joins them."""

from segdistill.models.decoders import MCDropout
from segdistill.models.encoders import ENCODERS, build_encoder, load_encoder_weights
from segdistill.models.heads import HEAD_PAIRS
from segdistill.models.segmenter import (
    ARCHITECTURES,
    Segmenter,
    build_segmenter,
    count_parameters,
)

__all__ = [
    "ARCHITECTURES",
    "ENCODERS",
    "HEAD_PAIRS",
    "MCDropout",
    "Segmenter",
    "build_encoder",
    "build_segmenter",
    "count_parameters",
    "load_encoder_weights",
]

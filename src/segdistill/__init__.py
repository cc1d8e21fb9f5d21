"""segdistill: distil segmentation teachers into fast students that report their uncertainty."""

__version__ = "0.1.0"

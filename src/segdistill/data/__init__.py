"""Data sets (Cityscapes layout, image/mask folders) and joint transforms."""

from segdistill.data.base import (
    LabelMapping,
    MapReader,
    SampleFiles,
    SegmentationDataset,
    read_image,
    read_mask,
)
from segdistill.data.cityscapes import CityscapesDataset, GtFineMap
from segdistill.data.folder import ClassesSpec, FolderDataset, load_classes
from segdistill.data.labels import CLASS_NAMES, IGNORE_INDEX, NUM_CLASSES, TRAIN_ID_COLORS
from segdistill.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ColorJitter,
    Compose,
    Normalize,
    RandomCrop,
    RandomHorizontalFlip,
    RandomScale,
    Sample,
    build_eval_transform,
    build_train_transform,
    to_tensors,
    unnormalize,
    worker_rng,
)

__all__ = [
    "CLASS_NAMES",
    "IGNORE_INDEX",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "NUM_CLASSES",
    "TRAIN_ID_COLORS",
    "CityscapesDataset",
    "ClassesSpec",
    "ColorJitter",
    "Compose",
    "FolderDataset",
    "GtFineMap",
    "LabelMapping",
    "MapReader",
    "Normalize",
    "RandomCrop",
    "RandomHorizontalFlip",
    "RandomScale",
    "Sample",
    "SampleFiles",
    "SegmentationDataset",
    "build_eval_transform",
    "build_train_transform",
    "load_classes",
    "read_image",
    "read_mask",
    "to_tensors",
    "unnormalize",
    "worker_rng",
]

"""Data sets and joint transforms, one module each; import from the module:

- `base`: `SegmentationDataset` (images and masks -> tensors), `read_image`, `read_mask`;
- `cityscapes`: `CityscapesDataset` (the official layout), `GtFineMap`;
- `folder`: `FolderDataset` (image/mask folders with a classes file);
- `labels`: the Cityscapes classes, `IGNORE_INDEX`, colours;
- `transforms`: crops, flips, scaling, colour jitter, normalisation;
- `synthstreets`: the procedural street-scene generator; `shifts`: its shifted copies.

The package itself imports none of them: the generator and the label tables do not need
torch, and `segdistill data ...` starts without it.
"""

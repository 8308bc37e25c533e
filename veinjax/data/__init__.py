"""veinjax's data: the vein phantom, folder/Labelme and usgra-seg readers, TFDS builders, the input pipeline.

The entry point is `veinjax.data.sources.load_raw_split(config, split)`. Submodules are imported on use, so
that importing this package pulls in neither TensorFlow nor TFDS.
"""

# Every dataset's splits (a dataset without a validation split has one carved from train).
SPLITS = ("train", "validation", "test")

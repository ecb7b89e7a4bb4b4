"""Datasets: ingest to sharded Parquet, synthetic data, and the Ray Data pipeline that feeds training."""

from unet_dist.data.codec import decode_image, decode_mask, encode_png, to_model_input
from unet_dist.data.ingest import dataset_exists, ingest, read_manifest, split_paths

__all__ = [
    "dataset_exists",
    "decode_image",
    "decode_mask",
    "encode_png",
    "ingest",
    "read_manifest",
    "split_paths",
    "to_model_input",
]

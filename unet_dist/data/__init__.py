"""Datasets: ingest to sharded Parquet, the manifest, synthetic data, and the Ray Data pipeline that feeds training."""

from unet_dist.data.codec import decode_image, decode_mask, encode_png, to_model_input
from unet_dist.data.ingest import ingest
from unet_dist.data.manifest import dataset_exists, read_manifest, split_paths
from unet_dist.data.problems import PairError, Problem, ProblemKind

__all__ = [
    "PairError",
    "Problem",
    "ProblemKind",
    "dataset_exists",
    "decode_image",
    "decode_mask",
    "encode_png",
    "ingest",
    "read_manifest",
    "split_paths",
    "to_model_input",
]

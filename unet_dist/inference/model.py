"""A model from a checkpoint alone: weights, config and the ``inference`` block (channels, classes, normalisation).

No dataset manifest is read: the training statistics travel in the checkpoint, so the same checkpoint gives the
same prediction for the same image wherever it runs (``evaluate``, ``predict``, another data set).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from unet_dist.checkpoint import CheckpointError, load_checkpoint
from unet_dist.config import Config, StorageConfig
from unet_dist.errors import UserError


@dataclass
class LoadedModel:
    """An eval-mode U-Net with what it needs to turn pixels into its input."""

    model: torch.nn.Module
    cfg: Config
    state: dict[str, Any]
    image_stats: dict[str, Any]
    class_names: list[str]

    @property
    def in_channels(self) -> int:
        return self.cfg.model.in_channels

    def preprocess(self, image: np.ndarray) -> torch.Tensor:
        """``H x W x C`` pixels (any dtype ingest accepts) -> the normalised ``C x H x W`` input of training."""
        from unet_dist.data.codec import to_model_input

        return to_model_input(image, self.in_channels, self.image_stats)

    @property
    def pad_multiple(self) -> int:
        """Inputs are padded (bottom/right, with 0 after normalisation) to a multiple of this, as in validation."""
        return int(self.state["inference"].get("pad_multiple", 1))

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device: str | torch.device) -> "LoadedModel":
        """Move the model (keeping its memory format) to ``device``; returns self."""
        fmt = torch.channels_last if self.cfg.train.channels_last else torch.contiguous_format
        self.model.to(device=torch.device(device), memory_format=fmt)
        return self

    @torch.no_grad()
    def logits(self, batch: torch.Tensor) -> torch.Tensor:
        """Float logits ``N x K x H x W`` (on the model's device) for normalised ``N x C x H x W`` inputs of any size:
        padded to :attr:`pad_multiple` as validation pads them, and cropped back."""
        from unet_dist.data.pipeline import pad_to, padded_shape

        h, w = batch.shape[-2:]
        x = pad_to(batch.to(self.device), *padded_shape(h, w, self.pad_multiple), 0.0)
        return self.model(x).float()[..., :h, :w]

    @torch.no_grad()
    def predict(self, image: np.ndarray | str | os.PathLike[str]) -> torch.Tensor:
        """Class ids (``H x W`` int64) for one image array or image file."""
        from unet_dist.data.codec import decode_image
        from unet_dist.inference.metrics import predict_labels

        pixels = decode_image(image) if not isinstance(image, np.ndarray) else image
        return predict_labels(self.logits(self.preprocess(pixels).unsqueeze(0)))[0]


def checkpoint_config(state: dict[str, Any], storage: StorageConfig | None = None) -> Config:
    """The run config stored in a checkpoint (its storage section replaced by ``storage``: secrets never travel)."""
    data = dict(state.get("config") or {})
    data.pop("storage", None)
    try:
        cfg = Config.model_validate(data)
    except Exception as err:
        raise CheckpointError(f"the checkpoint's config does not validate with this unet-dist ({str(err).splitlines()[0]})") from None
    return cfg.model_copy(update={"storage": storage}) if storage is not None else cfg


def load_model(checkpoint: str, storage: StorageConfig | None = None) -> LoadedModel:
    """Build the checkpoint's model (no pretrained download: the weights are in the checkpoint) in eval mode."""
    from unet_dist.models import create_unet

    state = load_checkpoint(checkpoint, storage)
    cfg = checkpoint_config(state, storage)
    info = state.get("inference")
    if not info:
        raise CheckpointError(f"{checkpoint} has no inference block (written by an older unet-dist): it cannot be used "
                              "without its dataset; evaluate it with --data DATASET or retrain")
    model = create_unet(cfg.model.model_copy(update={"weights": None}))
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as err:
        raise UserError(f"{checkpoint}: weights do not fit the model in its config ({str(err).splitlines()[0]})") from None
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return LoadedModel(model.eval(), cfg, state, info["image_stats"], list(info.get("class_names") or []))

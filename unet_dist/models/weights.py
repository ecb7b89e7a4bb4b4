"""Pretrained encoder weights: torchvision weights names or a state-dict file (local or s3://).

``model.weights`` is either a torchvision weights name ("DEFAULT", "IMAGENET1K_V1",
"ResNet34_Weights.IMAGENET1K_V1"), resolved through torchvision's weights enums and downloaded
only when a model is built with it, or the URI of a ``torch.save``d state dict: an encoder's,
a full torchvision model's (classifier/fc keys are ignored) or a whole U-Net's (``encoder.*``),
including any checkpoint reference (``RUN/epoch_NNNN``, an exported model folder, ``STORE/champion``).
"""

from __future__ import annotations

import io
import re
import warnings
from typing import TYPE_CHECKING, Any, Mapping

import torch

from unet_dist.catalog import is_weights_file, weights_member
from unet_dist.config import ModelConfig, StorageConfig
from unet_dist.errors import ConfigError, UserError
from unet_dist.models.blocks import Encoder
from unet_dist.models.registry import create_encoder
from unet_dist.runs import state_location

if TYPE_CHECKING:
    from torchvision.models import WeightsEnum


def torchvision_weights(model_name: str, name: str) -> WeightsEnum:
    """Resolve ``name`` to a member of ``model_name``'s torchvision weights enum, without downloading (the name is
    checked, with the one-line errors config validation gives, by :func:`unet_dist.catalog.weights_member`)."""
    member = weights_member(model_name, name)
    from torchvision.models import get_model_weights  # lazily: torchvision takes 1.3 s to import

    enum = get_model_weights(model_name)
    return enum.DEFAULT if member == "DEFAULT" else enum[member]


def safe_load(data: bytes, map_location: str = "cpu") -> Any:
    """``torch.load(weights_only=True)`` of in-memory bytes: tensors and plain values only, nothing executed.

    torch's warnings about the file (e.g. its pickle protocol) are the caller's to report, not the user's terminal's.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)


def read_state_dict(uri: str, storage: StorageConfig | None = None) -> dict[str, torch.Tensor]:
    """Load a state dict from a local path or s3:// URI (``weights_only=True``), unwrapping {"model": ...}; folders
    resolve as checkpoint references do (:func:`unet_dist.runs.state_location`)."""
    try:
        data = state_location(uri, storage).read_bytes()
    except UserError as err:
        raise ConfigError(f"model.weights: cannot read weights file {uri!r}: {err}") from None
    try:
        obj: Any = safe_load(data)
    except Exception as err:
        raise ConfigError(_load_refused(uri, err)) from None
    for key in ("state_dict", "model"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ConfigError(f"model.weights: {uri!r} does not hold a state dict of tensors")
    return dict(obj)


def _load_refused(uri: str, err: Exception) -> str:
    """One line on why ``torch.load(..., weights_only=True)`` refused ``uri``; never suggests an unsafe load."""
    unsafe = re.search(r"GLOBAL ([\w.]+)", str(err))
    if unsafe:
        return (f"model.weights: {uri!r} was refused by the safe loader (weights_only=True): it would load the "
                f"Python object {unsafe.group(1)!r}, not just tensors; save the encoder's tensors with "
                f"torch.save(model.state_dict(), path)")
    return (f"model.weights: {uri!r} is not a torch state-dict file loadable with weights_only=True "
            f"({type(err).__name__}); save one with torch.save(model.state_dict(), path)")


def adapt_input_conv(in_channels: int, weight: torch.Tensor) -> torch.Tensor:
    """Fit an RGB stem conv to ``in_channels`` inputs (timm's rule): sum for 1, else tile and rescale."""
    if in_channels == 1:
        return weight.sum(dim=1, keepdim=True)
    reps = -(-in_channels // weight.shape[1])
    return weight.repeat(1, reps, 1, 1)[:, :in_channels] * (weight.shape[1] / in_channels)


def load_encoder_weights(encoder: Encoder, weights: str, storage: StorageConfig | None = None) -> None:
    """Load ``weights`` (torchvision name or state-dict URI) into ``encoder``, strictly.

    Raises ConfigError naming the source when keys are missing, unexpected or differently shaped.
    """
    if is_weights_file(weights):
        source, state = weights, read_state_dict(weights, storage)
    else:
        if encoder.torchvision_name is None:
            raise ConfigError(f"model.weights: backbone {encoder.name!r} has no torchvision weights; "
                              f"pass a state-dict file (local path or s3://) instead of {weights!r}")
        enum = torchvision_weights(encoder.torchvision_name, weights)
        source, state = str(enum), enum.get_state_dict(progress=False, check_hash=True)
    if any(k.startswith("encoder.") for k in state):
        state = {k.removeprefix("encoder."): v for k, v in state.items() if k.startswith("encoder.")}
    own = encoder.state_dict()
    stem = encoder.stem_key
    if stem and stem in state and state[stem].ndim == 4 and state[stem].shape[1] != own[stem].shape[1]:
        state[stem] = adapt_input_conv(own[stem].shape[1], state[stem])
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own and k not in encoder.foreign_keys]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
              for k in own if k in state and state[k].shape != own[k].shape]
    problems = [f"{label} ({len(keys)}): {', '.join(keys[:4])}{', ...' if len(keys) > 4 else ''}"
                for label, keys in (("missing keys", missing), ("unexpected keys", unexpected),
                                    ("shape mismatch file vs model", shapes)) if keys]
    if problems:
        raise ConfigError(f"model.weights: {source!r} does not fit backbone {encoder.name!r} "
                          f"(depth/in_channels as configured): " + "; ".join(problems)
                          + f"; use weights saved from a {encoder.name} encoder or torchvision model")
    encoder.load_state_dict({k: state.get(k, v) for k, v in own.items()}, strict=True)


def check_weights(cfg: ModelConfig, storage: StorageConfig | None = None) -> None:
    """Preflight for a weights file (local or s3://): read it safely and check it fits the configured encoder.

    Raises the one-line ConfigError that building the model on a worker would, before any cluster starts.
    Torchvision weights names are checked by config validation (no download); nothing to do for them here.
    """
    if not cfg.weights or not is_weights_file(cfg.weights):
        return
    load_encoder_weights(create_encoder(cfg), cfg.weights, storage)

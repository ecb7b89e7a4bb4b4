"""A trained model on images, in one process: pure torch, no Ray.

Loading a checkpoint or exported model with its normalisation (``model``), the one evaluation pass shared with
training's validation (``validate``, ``metrics``), ``evaluate`` on a split, sliding-window tiles with TTA
(``tiles``), mask files (``masks``) and overlays (``overlay``). ``unet-dist evaluate``, ``report``, ``predict`` (in
this process or in Ray actors) and the training loop's validation all run on it.
"""

from unet_dist.inference.evaluate import evaluate, evaluate_model
from unet_dist.inference.model import LoadedModel, load_model
from unet_dist.inference.tiles import Tiling, predict_tiled

__all__ = ["LoadedModel", "load_model", "evaluate", "evaluate_model", "Tiling", "predict_tiled"]

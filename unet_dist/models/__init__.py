"""The configurable U-Net zoo: pure PyTorch, no Ray, no data code.

``create_unet(cfg.model)`` builds a :class:`UNet` whose encoder comes from the backbone registry
(``scratch``, torchvision VGG and ResNet families); ``registry_info()`` lists every choice.
"""

from unet_dist.models import scratch, vgg, resnet  # noqa: F401, I001  (registers the families; order = listing order)
from unet_dist.models.blocks import Encoder
from unet_dist.models.registry import (
    BACKBONES,
    BackboneSpec,
    check_model_config,
    create_encoder,
    get_backbone,
    list_backbones,
    maxunpool_problem,
    register_backbone,
    registry_info,
)
from unet_dist.models.unet import UNet, create_unet
from unet_dist.models.weights import check_weights, load_encoder_weights, torchvision_weights
from unet_dist.models.zoo import SmokeRow, Variant, smoke_variants, variants

__all__ = [
    "BACKBONES",
    "BackboneSpec",
    "Encoder",
    "SmokeRow",
    "UNet",
    "Variant",
    "check_model_config",
    "check_weights",
    "create_encoder",
    "create_unet",
    "get_backbone",
    "list_backbones",
    "load_encoder_weights",
    "maxunpool_problem",
    "register_backbone",
    "registry_info",
    "smoke_variants",
    "torchvision_weights",
    "variants",
]

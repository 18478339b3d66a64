"""Stand-in (see hdmnet_official_stand_ins)."""

from hdmnet_official_stand_ins import Conv2d, ConvModule, build_activation_layer, build_norm_layer

__all__ = ["Conv2d", "ConvModule", "build_activation_layer", "build_norm_layer"]

"""Stand-in (see hdmnet_official_stand_ins)."""

from hdmnet_official_stand_ins import constant_init, normal_init, trunc_normal_init

__all__ = ["constant_init", "normal_init", "trunc_normal_init"]

"""Stand-in (see hdmnet_official_stand_ins)."""

from hdmnet_official_stand_ins import resize

__all__ = ["resize"]

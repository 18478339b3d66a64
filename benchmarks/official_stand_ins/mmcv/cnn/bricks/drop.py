"""Stand-in (see hdmnet_official_stand_ins)."""

from hdmnet_official_stand_ins import DropPath, build_dropout

__all__ = ["DropPath", "build_dropout"]

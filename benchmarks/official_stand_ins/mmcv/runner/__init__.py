"""Stand-in (see hdmnet_official_stand_ins)."""

from hdmnet_official_stand_ins import BaseModule, ModuleList, Sequential

__all__ = ["BaseModule", "ModuleList", "Sequential"]

"""Stand-in (see hdmnet_official_stand_ins)."""

from hdmnet_official_stand_ins import PatchEmbed, nchw_to_nlc, nlc_to_nchw

__all__ = ["PatchEmbed", "nchw_to_nlc", "nlc_to_nchw"]

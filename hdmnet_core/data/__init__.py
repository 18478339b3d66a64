"""Datasets, fold splits, episodes and transforms. Never imports :mod:`hdmnet_core.model`."""

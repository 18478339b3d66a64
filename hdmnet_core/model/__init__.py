"""The HDMNet model, composed of small parts. Never imports :mod:`hdmnet_core.data`."""

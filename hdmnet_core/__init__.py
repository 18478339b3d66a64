"""hdmnet_core: the logic behind the HDMNet workspace (data, model, engine, metrics, plots)."""

from hdmnet_core.config import Config, ConfigError

__all__ = ["Config", "ConfigError", "__version__"]
__version__ = "0.1.0"

"""Configuration, one job per module: ``schema`` (the file's pydantic models), ``runtime`` (the frozen values
the Check reads), ``compile`` (schema → runtime), ``load`` (YAML and ``${ENV}`` → compiled config); ``cel``,
``secrets`` and ``reference`` beside them. Import from the submodule; the names below are for convenience.
"""

from authz.config.errors import ConfigError
from authz.config.load import load_config, parse_config
from authz.config.runtime import Config

__all__ = ["Config", "ConfigError", "load_config", "parse_config"]

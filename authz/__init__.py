"""mcp-authz: an Envoy external authorizer for MCP servers."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("mcp-authz")  # the one owner of the version: pyproject.toml, through the package metadata
except PackageNotFoundError:  # a source tree that was never installed (pip install -e . fixes it)
    __version__ = "0+unknown"

"""mcp-authz: an Envoy external authorizer for MCP servers."""

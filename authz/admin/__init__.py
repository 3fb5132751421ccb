"""The admin API (proto/mcp_authz/admin/v1/admin.proto): servicer, server, and the CLI's client."""

"""Authorization policy: which caller may do which MCP operation."""

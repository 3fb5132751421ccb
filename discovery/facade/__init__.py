"""The authorization facade: the authorization server MCP clients see for IdPs that lack what they need."""

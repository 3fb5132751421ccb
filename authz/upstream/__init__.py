"""What the MCP server receives besides the caller's identity: integration secrets, exchanged tokens
(RFC 8693), and the approval gate that holds sensitive tool calls until a person answers."""

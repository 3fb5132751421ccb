"""OAuth clients shared by the stages and discovery: the issuer metadata fetch (RFC 8414 / OIDC discovery)."""

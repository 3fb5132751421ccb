"""Who is calling: JWT access tokens (RFC 9068) and trusted-proxy identity."""

"""Check stages backed by the shared store: revocation, session binding, rate limits."""

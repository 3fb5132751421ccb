"""Generated at build time from proto/ by setup.py (grpcio-tools); the modules here are not committed."""

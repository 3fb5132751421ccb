"""Renderers: proxy configuration generated from the authorizer's own YAML."""

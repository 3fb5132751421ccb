"""Envoy's two ext_authz front ends: its messages in, the Check's decision out."""

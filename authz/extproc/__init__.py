"""List filtering for MCP responses: an Envoy ext_proc service next to the authorizer.

``metadata`` is the contract with the Check (what it hands over in dynamic metadata), ``lists``
the pure filtering of list results, ``sse`` the incremental event-stream rewriter, ``service``
the gRPC ``envoy.service.ext_proc.v3.ExternalProcessor``.
"""

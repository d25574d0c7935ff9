"""ContextIQ's REST gateway: HTTP/JSON transcoded to the gRPC services, grpc-gateway style.

Routes come from the ``google.api.http`` annotations of the service descriptors at start-up, so
an RPC with a binding is reachable with no gateway code.

Public API:
    ``gateway.app.create_app(...)``: the ASGI app.
    ``gateway.server.GatewayServer`` / ``gateway.server.serve(app, host=..., port=...)``:
    serving it with uvicorn (``start()``/``stop()``, ``port``, ``url``).
    ``python -m gateway``: standalone, configured from the environment (see ``__main__``).
    ``python -m gateway.build_descriptors``: regenerates ``descriptors.binpb`` (proto comments
    for the OpenAPI document).
"""

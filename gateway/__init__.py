"""ContextIQ's REST gateway: HTTP/JSON transcoded to the gRPC services, grpc-gateway style.

Routes come from the ``google.api.http`` annotations of the service descriptors at start-up, so
an RPC with a binding is reachable with no gateway code. ``create_app`` builds the Starlette app,
``GatewayServer`` serves it with uvicorn, and ``python -m gateway`` runs it standalone.
"""

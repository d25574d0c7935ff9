"""ContextIQ's shared runtime: settings, logging, errors, gRPC server bootstrap, DB and NATS.

Import the submodule you need (``from ciq_runtime.settings import Settings``); this package
imports nothing itself so that light modules stay light.
"""

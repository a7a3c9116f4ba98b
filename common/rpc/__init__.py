"""Request/reply over ZeroMQ: the envelope (``protocol``), the server, and clients.

``common.rpc.client`` is the blocking client (CLI), ``common.rpc.aio`` the asyncio
client (services, gateway), ``common.rpc.server`` the ROUTER every service runs.
Import the submodule you need; this package imports nothing heavy itself.
"""

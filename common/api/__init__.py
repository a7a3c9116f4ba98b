"""The contract between Dockyard processes: pydantic request, reply and event models.

One module per service (``events``, ``image``, ``snapshot``, ``execution``, ``shim``,
``supervisor``). Field docs say whether a field is required or optional and, for
stored objects, mutable or immutable. Services validate requests with these
models; clients may send plain dicts of the same shape.
"""

"""Base classes for API models."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Request(BaseModel):
    """A request body: unknown fields are refused, so a typo is an InvalidArgument."""

    model_config = ConfigDict(extra="forbid")


class Reply(BaseModel):
    """A reply body or stored object: unknown fields are ignored (newer peers add fields)."""

    model_config = ConfigDict(extra="ignore")


class NamespacesReply(Reply):
    """``<service>.namespaces``: the namespaces holding at least one of the service's objects."""

    namespaces: list[str]

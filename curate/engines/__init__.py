"""Execution engines: ``local`` (this process) and ``ray`` (a Ray cluster, through Ray Data).

Both run the same steps and write the same stage parts, rejects, manifest and shards; see
``curate.engines.parts`` for the units of work and ``curate.engines.ray`` for what is distributed how.
"""

from __future__ import annotations

from curate.engines.base import Engine, LocalEngine
from curate.errors import PipelineError

ENGINES = ("local", "ray")


def get_engine(name: str | Engine, address: str | None = None) -> Engine:
    """The engine called ``name`` (or ``name`` itself when it is an Engine); ``address`` points
    the ray engine at an existing cluster."""
    if isinstance(name, Engine):
        return name
    if name == "local":
        if address is not None:
            raise PipelineError("address is for engine='ray'; the local engine runs in this process")
        return LocalEngine()
    if name == "ray":
        from curate.engines.ray import RayEngine

        return RayEngine(address)
    raise PipelineError(f"unknown engine {name!r}; use one of {', '.join(ENGINES)}")


__all__ = ["ENGINES", "Engine", "LocalEngine", "get_engine"]

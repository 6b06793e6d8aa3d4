"""Relaying an agent's stream to the hub's caller.

A hub method exposed with ``@expose(stream=True)`` returns ``relay(...)``
(or iterates it and yields its own items): the hub calls the agent's stream
method over its client to that host (hub/agents.py) and hands each item on
as the caller takes it.  Credit flows end to end: the hub asks the agent for
an item only when its caller has taken the last one, so nothing piles up in
the hub for a slow caller (the wire drops a caller that stops reading, with
SlowConsumer, dcctl/wire/server.py).  When the caller goes away (its
heartbeat is lost, or it is dropped) the hub's generator is closed, and so
is the agent's stream (the agent notices within two heartbeats).

    @expose(stream=True, access="read")
    def container_logs_follow(self, name: str) -> dict:
        return relay(self.agents, self._owner(name), "container_logs", name, True)
"""
from __future__ import annotations

from typing import Any, Callable, Iterator

from dcctl import errors

__all__ = ["relay"]


def relay(agents: Any, host: str, method: str, *args: Any, first_timeout_s: float | None = None,
          annotate: Callable[[Any], Any] | None = None) -> Iterator[Any]:
    """Yield the items of ``method(*args)``, a stream method of ``host``'s
    agent, as the caller takes them.

    Args:
        agents: the hub's Agents (hub/agents.py).
        host: the host's name.
        first_timeout_s: seconds to wait for the agent's first item; None
            waits as long as it takes (a follower), a dead agent being
            noticed by its heartbeat all the same.
        annotate: ``annotate(item) -> item`` applied to each item (e.g. to
            add the host's name); None hands items on as they are.

    Yields: the agent's items.
    Raises (while iterating): NoSuchHost; Unreachable naming the host (it
    is marked unreachable, or its agent died, froze or restarted during the
    stream); SlowConsumer (the agent dropped the hub: cannot happen while
    the hub reads on, since the hub's own caller is dropped first); the
    agent's own errors.
    """
    row = agents.store.host(host)
    if row["state"] != "alive":
        raise errors.Unreachable(f"host {host} is unreachable (missed heartbeats)")
    client = agents.client(host, row)
    try:
        if first_timeout_s is None:
            items = client.stream(method, *args)
        else:
            items = client.call(method, *args, timeout_s=first_timeout_s)
    except errors.Unreachable as exc:
        raise errors.Unreachable(f"host {host}: {exc.message}", hint=exc.hint) from exc
    if not hasattr(items, "__next__"):  # a plain answer: one item
        items = iter([items])
    try:
        while True:
            try:
                item = next(items)
            except StopIteration:
                return
            except errors.Unreachable as exc:
                raise errors.Unreachable(f"host {host}: {exc.message}",
                                         hint=exc.hint or "the stream may resume once the host is back") from exc
            yield annotate(item) if annotate is not None else item
    finally:
        close = getattr(items, "close", None)
        if close is not None:
            close()

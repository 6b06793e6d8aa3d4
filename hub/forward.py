"""The hub's forwarded container methods: each ``container_*`` call goes to
the host that owns the named container (the fleet store says which), through
``Agents.call``; the hub adds what it knows (``host``, addresses) and keeps
its records in step (destroy forgets, connection changes refresh ports).
"""
from __future__ import annotations

import time

from dcctl import errors, validate, wire
from dcctl.wire import expose
from hub import streams
from hub.agents import VIEW_TIMEOUT_SECONDS


class ForwardMethods:
    """Forwarded container methods of HubService (a mixin); they use the
    hub's ``store`` and ``agents``."""

    def _owner(self, name: str) -> str:
        """The host that owns container ``name``. Raises: InvalidArgument,
        NoSuchContainer."""
        validate.container_name(name)
        return self.store.container(name)["host"]

    def _forward(self, method: str, name: str, *args, timeout_s: float | None = None):
        """``method(name, *args)`` on the owner of ``name`` (Agents.call)."""
        return self.agents.call(self._owner(name), method, name, *args, timeout_s=timeout_s)

    @expose(shielded=True)
    def container_start(self, name: str) -> dict:
        """Forwarded to the owning host (see the agent's container_start).

        Returns: the agent's answer plus ``host`` (the owner's name).
        Raises: the agent's errors; NoSuchContainer (not in the fleet);
        Unreachable (the owner missed its heartbeats, or does not answer);
        CallTimeout.
        """
        return {**self._forward("container_start", name), "host": self._owner(name)}

    @expose(shielded=True)
    def container_stop(self, name: str, timeout_s: float | None = None) -> dict:
        """Forwarded to the owning host (see the agent's container_stop).

        Returns: the agent's answer plus ``host`` (the owner's name).
        Raises: the agent's errors; NoSuchContainer (not in the fleet);
        Unreachable (the owner missed its heartbeats, or does not answer);
        CallTimeout.
        """
        validate.stop_timeout(timeout_s)
        return {**self._forward("container_stop", name, timeout_s), "host": self._owner(name)}

    @expose(shielded=True)
    def container_destroy(self, name: str, force: bool = False) -> dict:
        """Forwarded to the owning host; the fleet record goes too (see the
        agent's container_destroy).  A container already gone from its host
        is only forgotten.

        The row is "destroying" meanwhile; when the outcome is unknown
        (Unreachable, CallTimeout) it stays so, and the owner's next
        heartbeat that no longer lists the container forgets it
        (Healer.reconcile); the agent's own refusal makes it "placed" again.

        Returns: {name, destroyed: True}.
        Raises: the agent's errors (then the fleet record stays);
        Busy (its create is still under way: the row is "reserved");
        NoSuchContainer (in neither the fleet nor on its host); Unreachable
        (the owner missed its heartbeats, or does not answer); CallTimeout.
        """
        marked = False
        try:
            validate.container_name(name)
            if self.store.container(name)["state"] == "reserved":
                # its create is under way (or the journal has yet to decide it): forgetting
                # the row under the create would leave its copy running unrecorded
                raise errors.Busy(f"container {name!r} is being created",
                                  hint="destroy it once create_container has answered")
            marked = self.store.set_state(name, "destroying", "placed")
            result = self._forward("container_destroy", name, force)
        except (errors.Unreachable, errors.CallTimeout):
            raise  # the outcome is unknown: the row stays "destroying"
        except errors.NoSuchContainer:
            self.store.container(name)  # NoSuchContainer if the fleet lacks it too
            result = {"name": name, "destroyed": True}  # gone from its host already
        except errors.DcError:
            if marked:
                self.store.set_state(name, "placed", "destroying")
            raise
        self.store.forget(name)
        return result

    @expose(access="read")
    def container_inspect(self, name: str) -> dict:
        """Forwarded to the owning host (see the agent's container_inspect).

        Returns: the agent's answer plus ``host`` (the owner's name) and
        ``routes`` (the names routed to it).
        Raises: the agent's errors; NoSuchContainer (not in the fleet);
        Unreachable (the owner missed its heartbeats, or does not answer);
        CallTimeout.
        """
        return {**self._forward("container_inspect", name), "host": self._owner(name), "routes": self.routes_of(name)}

    @expose
    def container_exec(self, name: str, command: list | str, options: dict | None = None) -> dict:
        """Forwarded to the owning host (see the agent's container_exec); the
        call waits the command's timeout_s (default 300 s) plus 30 s.

        Returns: the agent's answer, as it is.
        Raises: the agent's errors; NoSuchContainer (not in the fleet);
        Unreachable (the owner missed its heartbeats, or does not answer);
        CallTimeout.
        """
        validate.command(command)
        timeout = validate.exec_options(options)["timeout_s"] + 30
        return self._forward("container_exec", name, command, options, timeout_s=timeout)

    @expose
    def container_enter(self, name: str, command: list | str | None = None, options: dict | None = None) -> dict:
        """Forwarded to the owning host (see the agent's container_enter),
        always with the tcp relay.

        Returns: the agent's answer plus ``address``: the owner's address
        (from its endpoint), where the client connects to the relay directly.
        Raises: the agent's errors; NoSuchContainer (not in the fleet);
        Unreachable (the owner missed its heartbeats, or does not answer);
        CallTimeout.
        """
        validate.enter_options(options)
        if command is not None:
            validate.command(command)
        host = self.store.host(self._owner(name))
        session = self._forward("container_enter", name, command, {"via": "tcp"})
        # the relay listens beside the agent's tcp endpoint
        return {**session, "address": wire.parse_endpoint(host["endpoint"]).host}

    @expose(access="read")
    def container_logs(self, name: str, options: dict | None = None) -> dict:
        """Forwarded to the owning host (see the agent's container_logs:
        options since, tail, timestamps; follow is container_logs_follow).

        Returns: the agent's answer plus ``host`` (the owner's name).
        Raises: the agent's errors; NoSuchContainer (not in the fleet);
        Unreachable (the owner missed its heartbeats, or does not answer);
        CallTimeout.
        """
        validate.log_options(options, time.time())
        if (options or {}).get("follow"):
            raise errors.InvalidArgument("container_logs does not follow; call container_logs_follow (a stream)",
                                         hint="dcctl container_logs NAME --follow does")
        return {**self._forward("container_logs", name, options), "host": self._owner(name)}

    @expose(access="read", stream=True)
    def container_logs_follow(self, name: str, options: dict | None = None):
        """The owning host's stream of the container's log, relayed (see the
        agent's container_logs_follow).

        Returns: a stream of the agent's items, each plus ``host``.
        Raises: the agent's errors; NoSuchContainer (not in the fleet);
        Unreachable (the owner missed its heartbeats, or does not answer);
        CallTimeout (no first item in time).
        """
        validate.log_options(options, time.time())
        host = self._owner(name)
        return streams.relay(self.agents, host, "container_logs_follow", name, options,
                             annotate=lambda item: {**item, "host": host})

    @expose(shielded=True)
    def container_connection_add(self, name: str, proto: str, container_port: int,
                                 host_port: int | None = None) -> dict:
        """Forwarded to the owning host (see the agent's
        container_connection_add); the fleet record's ports are refreshed.

        Returns: the agent's answer plus ``host`` (the owner's name) and
        ``host_address`` (the owner's address, where the port answers).
        Raises: the agent's errors; NoSuchContainer (not in the fleet);
        Unreachable (the owner missed its heartbeats, or does not answer);
        CallTimeout.
        """
        validate.protocol(proto)
        validate.port(container_port, "container port")
        if host_port is not None:
            validate.port(host_port, "host port")
        host = self.store.host(self._owner(name))
        result = self._forward("container_connection_add", name, proto, container_port, host_port)
        self._refresh_ports(name)
        return {**result, "host": host["name"], "host_address": host["address"]}

    @expose(shielded=True)
    def container_connection_rm(self, name: str, proto: str, container_port: int) -> dict:
        """Forwarded to the owning host (see the agent's
        container_connection_rm); the fleet record's ports are refreshed.

        Returns: the agent's answer, as it is.
        Raises: the agent's errors; NoSuchContainer (not in the fleet);
        Unreachable (the owner missed its heartbeats, or does not answer);
        CallTimeout.
        """
        validate.protocol(proto)
        validate.port(container_port, "container port")
        result = self._forward("container_connection_rm", name, proto, container_port)
        self._refresh_ports(name)
        return result

    def _refresh_ports(self, name: str) -> None:
        try:
            info = self._forward("container_inspect", name, timeout_s=VIEW_TIMEOUT_SECONDS)
            self.store.set_ports(name, info.get("ports", []))
        except errors.DcError:
            pass

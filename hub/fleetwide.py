"""The hub's fleet-wide calls: views merged from every host (container_ls,
network_ls, hostinfo), broadcast of an agent method to many hosts, and the
worker queue (one idle host runs each call); the fan-out helpers are
hub/fanout.py.
"""
from __future__ import annotations

import time

import gevent

from dcctl import errors, validate, wire
from dcctl.wire import coerce, expose
from dcctl.wire.client import StreamIter
from dcctl.wire.fanout import FanoutClient
from hub import fanout
from hub.agents import VIEW_TIMEOUT_SECONDS


#: Agent methods a read-only key may broadcast.
READ_AGENT_METHODS = frozenset({"container_ls", "container_inspect", "network_ls", "hostinfo", "image_ls",
                                "ops_facts"})


def _listing(result) -> bool:
    """Whether an agent's container_ls answer has the shape the fleet view
    merges: a list of maps, each with a string ``name``."""
    return isinstance(result, list) and all(isinstance(c, dict) and isinstance(c.get("name"), str) for c in result)


def _mappings_only(results: dict) -> dict:
    """Broadcast results where an "ok" answer that is not a map (a broken
    or hostile host's) becomes that host's error, so one host's answer
    never fails the view of the others."""
    return {host: res if res["status"] != "ok" or isinstance(res["result"], dict) else
            {"status": "error", "error": "InternalError",
             "message": f"a malformed answer ({type(res['result']).__name__}, not a map)"}
            for host, res in results.items()}


#: Fire-and-forget broadcasts a hub runs at once (each may wait up to its
#: timeout_s, 3600 s at most, on hosts that never answer).
FIRE_AND_FORGET_MAX = 16


class FleetwideMethods:
    """Fleet-wide methods of HubService (a mixin); they use the hub's
    ``store``, ``agents`` and ``workers``, and keep an agent's method
    schema in ``_agent_schema`` (None until asked)."""

    def _coerce(self, method: str, args: list) -> list:
        """Arguments typed as text (dcctl, the stock CLI) converted to what the
        agent method declares, by the wire's one coercion (dcctl.wire.coerce),
        from an agent's _zerorpc_inspect (asked once); anything that fits no
        declared type is passed as is and the agent's own validation answers."""
        if not any(isinstance(a, str) for a in args):
            return args
        if self._agent_schema is None:
            for h in self.store.hosts():
                if h["state"] == "alive":
                    try:
                        self._agent_schema = self.agents.call(h["name"], "_zerorpc_inspect", timeout_s=5)["methods"]
                        break
                    except errors.DcError:
                        continue
        return coerce.coerce_args(args, coerce.params_of((self._agent_schema or {}).get(method) or {}))

    def fanout_client(self) -> FanoutClient:
        """The hub's one FanoutClient (dcctl.wire.fanout), made on first use,
        with the hub's key pair as its CURVE client keys towards agents."""
        fan = self.__dict__.get("_fan")
        if fan is None:
            fan = self.__dict__["_fan"] = FanoutClient(self.server_pair, heartbeat_s=wire.DEFAULT_HEARTBEAT_SECONDS)
        return fan

    def close_fanout(self) -> None:
        """Close the FanoutClient (its calls waiting fail with Unreachable)."""
        fan = self.__dict__.pop("_fan", None)
        if fan is not None:
            fan.close()

    def _fan_out(self, hosts: list[dict], every: list[dict], method: str, args: list, timeout_s: float) -> dict:
        """fanout.lean_broadcast to ``hosts``; connections to hosts no longer
        in ``every`` (the store's rows just read) are closed first."""
        fan = self.fanout_client()
        fan.retain(h["name"] for h in every)
        return fanout.lean_broadcast(fan, hosts, method, args, timeout_s, self.server_pair)

    def _gather(self, method: str, *args) -> dict:
        hosts = self.store.hosts()
        return self._fan_out(hosts, hosts, method, list(args), VIEW_TIMEOUT_SECONDS)

    @expose(access="read")
    def container_ls(self) -> list:
        """Every container in the fleet, with a ``host`` column (the agent's
        container_ls keys).  A container on a host that does not answer
        within 5 s is still listed from the fleet's records, with state
        "unknown" (or "reserved" while being placed) and only host, name,
        state, image_id and ports (never transiently missing).

        Returns: [{host, name, state, ...}] sorted by name and host.
        """
        gathered = self._gather("container_ls")["results"]
        seen, out = set(), []
        for host, res in gathered.items():
            if res["status"] == "ok" and _listing(res["result"]):  # a malformed one: its rows come from the records
                for c in res["result"]:
                    out.append({**c, "host": host})  # the host column is the answering host's, whatever it says
                    seen.add(c["name"])
        for row in self.store.containers():
            if row["name"] not in seen:
                state = "reserved" if row["state"] == "reserved" else "unknown"
                out.append({"host": row["host"], "name": row["name"], "state": state, "image_id": row["image"],
                            "ports": row["ports"]})
        return sorted(out, key=lambda c: (c["name"], c["host"]))

    @expose(access="read")
    def network_ls(self) -> list:
        """Every host's network_ls, one row per host.

        Returns: [{host, address (the host's), and the agent's network_ls
        keys, or error (the error's name, or "timeout") when the host did
        not answer within 5 s}].
        """
        hosts = {h["name"]: h for h in self.store.hosts()}
        out = []
        for host, res in _mappings_only(self._gather("network_ls")["results"]).items():
            row = {"host": host, "address": hosts[host]["address"]}
            row.update(res["result"] if res["status"] == "ok" else {"error": res.get("error", "timeout")})
            row["host"] = host
            out.append(row)
        return out

    @expose(access="read")
    def hostinfo(self) -> list:
        """Every host's hostinfo, one row per host.

        Returns: [{host, status ("ok" | "error" | "timeout", within 5 s),
        and the agent's hostinfo keys when ok, else message (why)}].
        """
        return [{"status": res["status"],
                 **(res["result"] if res["status"] == "ok" else
                    {"message": res.get("message") or res.get("error") or "no answer within 5 s"}), "host": host}
                for host, res in _mappings_only(self._gather("hostinfo")["results"]).items()]

    @expose(access="read")
    def broadcast(self, method: str, args: list | None = None, options: dict | None = None) -> dict:
        """Call an agent method on every targeted host in parallel.

        Args:
            method: an agent method name (e.g. hostinfo, ops_run, ops_facts).
            args: its positional arguments.
            options: {target: glob on host names or "label:k=v",
                timeout_s (default 10): per-host deadline, fire_and_forget
                (bool): return at once, results discarded}.

        Returns: {summary {targeted, ok, error, timeout, duration_s},
        results {host: {status: ok|error|timeout, result | error, message}}}.
        A frozen or dead host is reported as timeout; it never delays the
        answer past timeout_s.  Arguments given as text are converted by the
        agent method's declared types.

        Raises: NoSuchHost (the target matches no host), InvalidArgument
        (bad method, target, timeout_s or option), Busy (FIRE_AND_FORGET_MAX
        fire-and-forget broadcasts are still running: each holds its hosts'
        calls until their timeout_s, so they are bounded),
        PermissionDenied (a read-only key broadcasting a method that is not
        read-only).
        """
        opts = validate.options(options, {"target": "", "timeout_s": "", "fire_and_forget": ""}, "broadcast")
        caller = wire.current_caller()
        if caller is not None and caller.role != "admin" and method not in READ_AGENT_METHODS:
            raise errors.PermissionDenied(f"role {caller.role!r} may broadcast only read methods "
                                          f"({', '.join(sorted(READ_AGENT_METHODS))})")
        timeout = validate.number(opts.get("timeout_s", 10.0), "timeout_s", minimum=0.1, maximum=3600)
        if opts.get("target") is not None and not isinstance(opts.get("target"), str):
            raise errors.InvalidArgument("target must be a glob on host names or label:KEY=VALUE")
        if not isinstance(method, str) or not method:
            raise errors.InvalidArgument("method must be an agent method name")
        if not isinstance(opts.get("fire_and_forget", False), bool):
            raise errors.InvalidArgument("fire_and_forget must be true or false")
        every = self.store.hosts()
        hosts = fanout.targets(every, opts.get("target"))
        if not hosts:
            raise errors.NoSuchHost(f"no host matches the target {opts.get('target') or '*'!r}",
                                    hint="see `dcctl hosts` for names and labels")
        args = self._coerce(method, list(args or []))
        if opts.get("fire_and_forget"):
            running = self.__dict__.setdefault("_fire_and_forget", set())
            if len(running) >= FIRE_AND_FORGET_MAX:
                raise errors.Busy(f"{len(running)} fire-and-forget broadcasts are still running on this hub",
                                  hint="wait for them (each ends by its timeout_s), or broadcast and wait")
            task = gevent.spawn(self._fan_out, hosts, every, method, args, timeout)
            running.add(task)
            task.link(running.discard)
            return {"summary": {"targeted": len(hosts), "ok": 0, "error": 0, "timeout": 0, "duration_s": 0.0},
                    "results": {}, "fire_and_forget": True}
        return self._fan_out(hosts, every, method, args, timeout)

    @expose
    def queue(self, method: str, args: list | None = None, options: dict | None = None) -> dict:
        """Run an agent method on exactly one idle host (worker queue).

        Args:
            method: an agent method name (e.g. ops_run).
            args: its positional arguments (text is converted by the
                method's declared types, as for broadcast).
            options: {timeout_s (default 60): for waiting for an idle host
                and, again, for the call; idempotent (bool): retry once on
                another host if the first one is lost}.

        Returns: {host, result (the method's answer), duration_s (seconds),
        attempts (1, or 2 after an idempotent retry)}.
        Raises: InvalidArgument (bad option), NoCapacity (no idle host in
        time), CallTimeout (the call ran past timeout_s; it may still be
        running), HostLost (the host died mid-call; it may or may not have
        run), InvalidArgument (a stream method: it may have started), or the
        method's own error.
        """
        opts = validate.options(options, {"timeout_s": "", "idempotent": ""}, "queue")
        timeout = validate.number(opts.get("timeout_s", 60.0), "timeout_s", minimum=0.1, maximum=86400)
        if not isinstance(method, str) or not method:
            raise errors.InvalidArgument("method must be an agent method name")
        if not isinstance(opts.get("idempotent", False), bool):
            raise errors.InvalidArgument("idempotent must be true or false")
        args, tried = self._coerce(method, list(args or [])), set()
        started = time.monotonic()
        while True:
            host = self.workers.acquire(timeout, exclude=tried)
            tried.add(host)
            try:
                result = self.agents.call(host, method, *args, timeout_s=timeout)
                if isinstance(result, StreamIter):  # its answer could not be sent on: refused, typed
                    result.close()
                    raise errors.InvalidArgument(f"{method} is a stream method; the queue takes plain methods",
                                                 hint="call it on one host directly")
                return {"host": host, "result": result, "attempts": len(tried),
                        "duration_s": round(time.monotonic() - started, 6)}
            except errors.CallTimeout as exc:
                raise errors.CallTimeout(f"{method} ran past its {timeout:g} s on {host}; it may still be running "
                                         "there", hint="give a longer --timeout") from exc
            except errors.Unreachable as exc:
                if not opts.get("idempotent") or len(tried) >= 2:
                    raise errors.HostLost(f"{host} stopped answering during {method} "
                                          f"({type(exc).__name__}); it may or may not have run") from exc
            finally:
                self.workers.release(host)

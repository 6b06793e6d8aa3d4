"""Volumes seen from the hub: the fleet-wide ``volume_ls`` and the rule
that places a container with volumes on the host holding them (the seed's
rule: a stateful container stays with its data).

``VolumeMethods`` is a mixin of HubService (it uses ``store`` and
``agents``).  Volumes themselves are the agents' (agents/volumes.py): the
hub's ``volume_create NAME --host HOST`` and ``volume_rm NAME [--host
HOST]`` forward to the host's agent (a volume name lives on one host, the
placement rule's premise), and container_create makes a missing one.
"""
from __future__ import annotations

from dcctl import errors, validate
from dcctl.wire import expose
from hub import fanout
from hub.agents import VIEW_TIMEOUT_SECONDS


class VolumeMethods:
    """The hub's volume methods (a mixin of HubService)."""

    def _volume_rows(self, failures: dict | None = None) -> tuple[list[dict], list[str]]:
        """(every alive host's volumes [{host, ...volume_ls keys}], the
        hosts that did not answer); ``failures``, when given, gets each of
        those hosts' broadcast result ({status, error, message})."""
        gathered = fanout.broadcast(
            self.store.hosts(), lambda h: self.agents.call(h["name"], "volume_ls", timeout_s=VIEW_TIMEOUT_SECONDS),
            VIEW_TIMEOUT_SECONDS + 0.5)["results"]
        rows, silent = [], []
        for host, res in sorted(gathered.items()):
            if res["status"] == "ok":
                rows.extend({"host": host, **v} for v in res["result"])
            else:
                silent.append(host)
                if failures is not None:
                    failures[host] = res
        return rows, silent

    @expose(access="read")
    def volume_ls(self) -> list:
        """Every host's volumes.

        Returns: [{host, name, created (Unix s), path, size_bytes, used_by
        [containers]}] by name and host, then a row {host, status ("error" |
        "timeout"), message, unreachable: true} for each host that did not
        answer within 5 s (its volumes are not listed; dcctl names it on
        stderr).
        """
        failures: dict = {}
        rows, _ = self._volume_rows(failures)
        return sorted(rows, key=lambda r: (r["name"], r["host"])) + [
            {"host": h, "status": res["status"], "message": res.get("message") or res.get("error") or "no answer",
             "unreachable": True} for h, res in sorted(failures.items())]

    @expose(shielded=True)
    def volume_create(self, name: str, options: dict | None = None) -> dict:
        """Create a named volume on a host (containers given ``volumes:
        ["NAME:/path"]`` are then placed there).  Creating one that exists
        on that host is not an error.

        Args: name: a volume name (1-64 chars of [A-Za-z0-9_.-]); options:
        {host: the host to make it on (required unless a host already holds
        it)}.
        Returns: {host, name, created (Unix s), created_now (False: it
        existed)}.
        Raises: InvalidArgument (bad name or option, no host given, or the
        name is already a volume on another host), NoSuchHost, Unreachable,
        StoreError (the agent's I/O).
        """
        validate.volume_name(name)
        opts = validate.options(options, {"host": "the host to make it on"}, "volume_create")
        host = opts.get("host")
        if host is not None and not isinstance(host, str):
            raise errors.InvalidArgument("host must be a host name")
        rows, _ = self._volume_rows()
        holders = sorted({r["host"] for r in rows if r["name"] == name})
        if holders and host is not None and host not in holders:
            raise errors.InvalidArgument(f"volume {name} is already on {', '.join(holders)}, not on {host}",
                                         hint="a volume name names one host's volume: pick another name")
        host = host or (holders[0] if holders else None)
        if host is None:
            raise errors.InvalidArgument(f"volume_create {name}: which host?",
                                         hint=f"dcctl volume_create {name} --host HOST (dcctl hosts lists them)")
        return {"host": host, **self.agents.call(host, "volume_create", name)}

    @expose(shielded=True)
    def volume_rm(self, name: str, options: dict | None = None) -> dict:
        """Remove a volume and its data from the host holding it.

        Args: name: a volume name; options: {host: the host (default: the
        one that holds it; needed when several do)}.
        Returns: {host, name, removed: True, freed_bytes}.
        Raises: InvalidArgument (bad name or option; several hosts hold
        it and no host is given), NoSuchVolume (no answering host holds
        it), NoSuchHost, Unreachable, VolumeInUse (a container on that host
        is configured with it: the error names them), StoreError.
        """
        validate.volume_name(name)
        opts = validate.options(options, {"host": "the host holding it"}, "volume_rm")
        host = opts.get("host")
        if host is not None and not isinstance(host, str):
            raise errors.InvalidArgument("host must be a host name")
        if host is None:
            rows, silent = self._volume_rows()
            holders = sorted({r["host"] for r in rows if r["name"] == name})
            if len(holders) > 1:
                raise errors.InvalidArgument(f"volume {name} is on several hosts: {', '.join(holders)}",
                                             hint=f"dcctl volume_rm {name} --host HOST")
            if not holders:
                raise errors.NoSuchVolume(f"no volume {name!r} on any host"
                                          + (f" that answered ({', '.join(silent)} did not)" if silent else ""))
            host = holders[0]
        return {"host": host, **self.agents.call(host, "volume_rm", name)}

    def volume_host(self, names: list[str], pinned: str | None = None) -> str | None:
        """The host a container using volumes ``names`` must go to: the one
        holding any of them, or ``pinned``, or None (no host holds one yet:
        any host; the agent makes them).

        Raises: InvalidArgument (they are on several hosts, or not on the
        pinned host); Unreachable (a host that may hold them does not
        answer: placing elsewhere would split the data)."""
        rows, silent = self._volume_rows()
        holders = sorted({r["host"] for r in rows if r["name"] in names})
        if len(holders) > 1:
            raise errors.InvalidArgument(f"volumes {', '.join(sorted(names))} are on several hosts: "
                                         f"{', '.join(holders)}")
        if holders:
            if pinned and pinned != holders[0]:
                raise errors.InvalidArgument(f"volume(s) {', '.join(sorted(names))} are on {holders[0]}, "
                                             f"not on the pinned host {pinned}")
            return holders[0]
        alive_silent = [h for h in silent if self.store.host(h)["state"] == "alive"]
        if alive_silent and not pinned:
            raise errors.Unreachable(f"hosts {', '.join(alive_silent)} did not list their volumes; "
                                     "cannot tell where the volumes are",
                                     hint="try again once they answer, or pin the host (option host)")
        return pinned

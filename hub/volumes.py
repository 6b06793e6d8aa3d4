"""Volumes seen from the hub: the fleet-wide ``volume_ls`` and the rule
that places a container with volumes on the host holding them (the seed's
rule: a stateful container stays with its data).

``VolumeMethods`` is a mixin of HubService (it uses ``store`` and
``agents``).  Volumes themselves are the agents' (agents/volumes.py):
``volume_create`` / ``volume_rm`` are called on a host with ``dcctl
broadcast volume_create NAME --target HOST``, or made by container_create.
"""
from __future__ import annotations

from dcctl import errors
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

"""Boundary validation shared by the hub and the agents.

Each function returns the clean value or raises ``InvalidArgument`` naming the
argument and what it should be.
"""
from __future__ import annotations

import difflib
import ipaddress
import re
from typing import Any

from dcctl.errors import InvalidArgument

NAME_MAX_CHARS = 64
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
#: The one env-key rule (container env, image manifests, /etc/dcfleet/env):
#: a shell variable name of at most ENV_KEY_MAX_CHARS characters.
ENV_KEY_MAX_CHARS = 128
_ENV_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
PROTOCOLS = ("tcp", "udp")


def container_name(name: Any, what: str = "container name") -> str:
    """A fleet-unique container name: 1-64 chars of ``[A-Za-z0-9_.-]``,
    starting with a letter or digit, no ``..`` (dotted like
    ``jerome.awesome.web``). It is also the container's hostname.

    ``what`` names the value in the error (host and hub names share the
    alphabet: "host name", "hub name").
    Raises: InvalidArgument."""
    if not isinstance(name, str):
        raise InvalidArgument(f"{what} must be a string, got {type(name).__name__}")
    if not name:
        raise InvalidArgument(f"{what} is empty")
    if len(name) > NAME_MAX_CHARS:
        raise InvalidArgument(f"{what} is {len(name)} chars; at most {NAME_MAX_CHARS}")
    if not _NAME_RE.match(name) or ".." in name or name.endswith("."):
        raise InvalidArgument(
            f"bad {what} {name!r}: use letters, digits, '.', '_' and '-', "
            "starting with a letter or digit, without '..'")
    return name


def host_name(name: Any) -> str:
    """A host's name (agent --host-name, host_add): the container name's
    rules (it is a key in the store and in etcd). Raises: InvalidArgument."""
    return container_name(name, "host name")


#: A host's placement labels (agent --label, host_register): at most
#: LABELS_MAX_COUNT of them, each key 1-63 characters of letters, digits and
#: ``_.-/`` starting with a letter or digit, each value at most
#: LABEL_VALUE_MAX_CHARS printable characters (they are shown in ``hosts``,
#: matched by ``label:k=v`` targets and kept in every host row).
LABELS_MAX_COUNT = 32
LABEL_KEY_MAX_CHARS = 63
LABEL_VALUE_MAX_CHARS = 255
_LABEL_KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_./-]{0,62}$")


def labels(value: Any, what: str = "labels") -> dict[str, str]:
    """A map of placement labels {key: value} (None: {}); see
    LABELS_MAX_COUNT for the rules.  Raises: InvalidArgument."""
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise InvalidArgument(f"{what} must be a map of strings {{key: value}}")
    if len(value) > LABELS_MAX_COUNT:
        raise InvalidArgument(f"{what}: {len(value)} labels, at most {LABELS_MAX_COUNT}")
    for k, v in value.items():
        if not _LABEL_KEY_RE.match(k):
            raise InvalidArgument(f"bad label key {k!r:.80} in {what}: 1 to {LABEL_KEY_MAX_CHARS} letters, "
                                  "digits, '_', '.', '-' or '/', starting with a letter or digit")
        if len(v) > LABEL_VALUE_MAX_CHARS or not v.isprintable():
            raise InvalidArgument(f"bad value for label {k!r} in {what}: at most {LABEL_VALUE_MAX_CHARS} "
                                  "printable characters")
    return dict(value)


def host_address(value: Any, what: str = "address") -> str:
    """A host's address (where its mapped ports answer, the router's
    backend address): an IPv4 or IPv6 address, not unspecified (0.0.0.0,
    ::) nor multicast, returned in its normal form; "" or None (no address
    advertised) is "".  Raises: InvalidArgument."""
    if value is None or value == "":
        return ""
    try:
        ip = ipaddress.ip_address(value) if isinstance(value, str) and len(value) <= 64 else None
    except ValueError:
        ip = None
    if ip is None or ip.is_unspecified or ip.is_multicast:
        raise InvalidArgument(f"{what} must be an IPv4 or IPv6 address (not unspecified or multicast), "
                              f"got {value!r:.80}")
    return str(ip)


def port(value: Any, what: str = "port") -> int:
    """A TCP/UDP port number 1-65535."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise InvalidArgument(f"{what} must be an integer from 1 to 65535, got {value!r}")
    return value


def protocol(value: Any) -> str:
    """'tcp' or 'udp'."""
    if value not in PROTOCOLS:
        raise InvalidArgument(f"protocol must be one of {', '.join(PROTOCOLS)}, got {value!r}")
    return value


def is_env_key(key: Any) -> bool:
    """Whether ``key`` is an environment variable name: ``[A-Za-z_]`` then
    ``[A-Za-z0-9_]``, 1 to ENV_KEY_MAX_CHARS characters."""
    return isinstance(key, str) and len(key) <= ENV_KEY_MAX_CHARS and bool(_ENV_KEY_RE.match(key))


def env_key(key: Any) -> str:
    """Return ``key`` if is_env_key.  Raises: InvalidArgument."""
    if not is_env_key(key):
        raise InvalidArgument(f"bad environment variable name {key!r:.80}: want [A-Za-z_][A-Za-z0-9_]*, "
                              f"at most {ENV_KEY_MAX_CHARS} characters")
    return key


def env(value: Any) -> dict[str, str]:
    """An environment mapping of str -> str with shell-safe keys."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidArgument("env must be a map of NAME -> value")
    if len(value) > 256:
        raise InvalidArgument("env has more than 256 variables")
    for k, v in value.items():
        env_key(k)
        if not isinstance(v, str) or "\x00" in v or len(v) > 65536:
            raise InvalidArgument(f"environment variable {k} must be a string without NUL, under 64 KiB")
    return dict(value)


def command(value: Any, what: str = "command") -> list[str]:
    """A command as an argv list of strings; a single string means
    ``/bin/sh -c STRING``."""
    if isinstance(value, str):
        if not value.strip():
            raise InvalidArgument(f"{what} is empty")
        if "\x00" in value:
            raise InvalidArgument(f"{what} must be a string without NUL bytes")
        return ["/bin/sh", "-c", value]
    if not isinstance(value, (list, tuple)) or not value:
        raise InvalidArgument(f"{what} must be a non-empty list of strings or a string")
    if len(value) > 4096 or not all(isinstance(a, str) and "\x00" not in a for a in value):
        raise InvalidArgument(f"{what} must be a list of strings without NUL bytes")
    return list(value)


def number(value: Any, what: str, *, minimum: float, maximum: float, integer: bool = False) -> float:
    """A number within [minimum, maximum]; ``integer`` refuses floats."""
    ok_types = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, ok_types) or not minimum <= value <= maximum:
        kind = "an integer" if integer else "a number"
        raise InvalidArgument(f"{what} must be {kind} from {_num(minimum)} to {_num(maximum)}, got {value!r}")
    return value


def _num(x: float) -> str:
    """12582912 -> "12582912 (12 MiB)"; 0.5 -> "0.5"."""
    if float(x).is_integer():
        x = int(x)
        for unit, size in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20)):
            if x >= size and x % (size // 1024 or 1) == 0:
                return f"{x} ({x / size:g} {unit})"
        return str(x)
    return f"{x:g}"


def options(value: Any, allowed: dict[str, str], what: str) -> dict:
    """An options map whose keys are all in ``allowed`` (key -> description)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidArgument(f"{what} options must be a map")
    unknown = sorted((k for k in value if k not in allowed), key=repr)
    if unknown:
        near = [(k, difflib.get_close_matches(k, list(allowed), n=1, cutoff=0.75)) for k in unknown
                if isinstance(k, str)]
        hint = "; ".join(f"{k!r}: did you mean {m[0]!r}?" for k, m in near if m) or None
        raise InvalidArgument(
            f"unknown {what} option(s) {', '.join(map(repr, unknown))}; known: {', '.join(sorted(allowed))}",
            hint=hint)
    return dict(value)


# ------------------------------------------------ container options (agent and hub)
# One set of rules for the options of the container methods: the agent
# applies them, and the hub applies the same ones before it forwards a call
# or reads an option itself.  Bounds that depend on the host (its CPU count,
# its exec output cap) are passed in by the agent; the hub checks the
# host-independent ones.

CREATE_OPTIONS = {
    "memory_bytes": "hard memory limit, bytes (>= 4 MiB)",
    "cpus": "CPU quota as a count of CPUs, e.g. 0.5",
    "cpu_shares": "relative CPU weight, 2-262144 (1024 = normal)",
    "pids_limit": "most processes and threads in the container, 16-4194304 (default: the agent's "
                  "default_pids_limit, 4096)",
    "env": "environment of the container's command, {NAME: value}",
    "command": "the command init runs (argv list, or a string for /bin/sh -c)",
    "restart": "restart policy: no (default), always, on-failure or on-failure:N",
    "volumes": "named volumes to bind-mount, [\"NAME:/path\"] (a missing volume is created)",
}
EXEC_OPTIONS = {
    "timeout_s": "seconds before the command is killed (default 300)",
    "env": "extra environment variables {NAME: value}",
    "max_output_bytes": "cap on each of stdout and stderr, bytes",
    "stdin": "bytes fed to the command's standard input",
}
ENTER_OPTIONS = {"via": "relay transport: tcp or ipc"}
MIN_MEMORY_BYTES = 4 << 20
MAX_MEMORY_BYTES = 1 << 50
MAX_CPUS = 4096
#: Bounds of the ``pids_limit`` create option (the pids cgroup's
#: ``pids.max``): 16 is about what a system image's init, a shell and a
#: command need; 4194304 is the kernel's PID_MAX_LIMIT on 64-bit.
MIN_PIDS_LIMIT = 16
MAX_PIDS_LIMIT = 4 << 20
EXEC_DEFAULT_TIMEOUT_SECONDS = 300.0
EXEC_MAX_TIMEOUT_SECONDS = 86400.0
EXEC_MAX_OUTPUT_BYTES = 16 << 20
STOP_MAX_TIMEOUT_SECONDS = 3600.0
LOG_MAX_BYTES = 4 << 20
#: A container's command and environment together, bytes (each string and
#: its NUL): execve(2) refuses more than a quarter of the stack limit (2 MiB
#: by default) with E2BIG, and the create's spec must also fit one fleet
#: store row (hub.placement.SPEC_MAX_BYTES, under etcd's request limit).
EXEC_ARGS_MAX_BYTES = 512 << 10
RESTART_POLICIES = ("no", "always", "on-failure")
_POLICY_RE = re.compile(r"^(no|always|on-failure)(?::(\d{1,4}))?$")


def restart_policy(value: Any, default_max_retries: int = 10) -> dict:
    """``"no"`` (or None), ``"always"``, ``"on-failure"`` or
    ``"on-failure:N"`` (N up to 9999) -> {"policy", "max_retries"};
    ``default_max_retries`` is N when ``on-failure`` gives none."""
    if value is None:
        return {"policy": "no", "max_retries": 0}
    m = _POLICY_RE.match(value) if isinstance(value, str) else None
    if not m or (m.group(2) and m.group(1) != "on-failure"):
        raise InvalidArgument(f"restart policy must be no, always, on-failure or on-failure:N, got {value!r}")
    retries = int(m.group(2)) if m.group(2) else (default_max_retries if m.group(1) == "on-failure" else 0)
    return {"policy": m.group(1), "max_retries": retries}


MIN_CPUS = 0.01


def cpus_option(value: Any, max_cpus: float = MAX_CPUS) -> float:
    """The ``cpus`` create option: a number from MIN_CPUS to ``max_cpus``.
    The agent passes its CPU count; the hub, which checks before it knows
    the host, passes MAX_CPUS, and then the message names the bound that is
    real (the host's CPU count), not MAX_CPUS.

    Raises: InvalidArgument giving the bound the value passes."""
    upper = _num(max_cpus) + " (this host's CPU count)" if max_cpus != MAX_CPUS else "the host's CPU count"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise InvalidArgument(f"cpus must be a number from {_num(MIN_CPUS)} to {upper}, got {value!r}")
    if value < MIN_CPUS:
        raise InvalidArgument(f"cpus must be at least {_num(MIN_CPUS)}, got {value!r}")
    if value > max_cpus:
        raise InvalidArgument(f"cpus must be at most {upper}, got {value!r}")
    return value


def pids_limit_option(value: Any, what: str = "pids_limit") -> int:
    """A PID limit (the ``pids_limit`` create option, the agent's
    ``default_pids_limit``): an integer from MIN_PIDS_LIMIT to
    MAX_PIDS_LIMIT, a count of processes and threads (the pids cgroup's
    ``pids.max``).

    Raises: InvalidArgument naming ``what`` and the bounds."""
    if isinstance(value, bool) or not isinstance(value, int) or not MIN_PIDS_LIMIT <= value <= MAX_PIDS_LIMIT:
        raise InvalidArgument(f"{what} must be an integer from {MIN_PIDS_LIMIT} to {MAX_PIDS_LIMIT} "
                              f"(processes and threads), got {value!r}")
    return value


def create_options(value: Any, *, max_cpus: float = MAX_CPUS) -> dict:
    """container_create's options map, checked and normalised: keys of
    CREATE_OPTIONS only; memory_bytes an integer from 4 MiB to 2^50; cpus a
    number from 0.01 to ``max_cpus`` (the agent passes its CPU count);
    cpu_shares an integer 2-262144; pids_limit an integer from
    MIN_PIDS_LIMIT to MAX_PIDS_LIMIT (16-4194304); env (see ``env``, always present in the
    result, {} by default); command (see ``command``, as an argv list);
    command and env together at most EXEC_ARGS_MAX_BYTES (512 KiB);
    restart (see ``restart_policy``, kept as given).  None values are
    dropped (as if absent).

    Raises: InvalidArgument naming the first bad option."""
    opts = {k: v for k, v in options(value, CREATE_OPTIONS, "container_create").items() if v is not None}
    if "memory_bytes" in opts:
        number(opts["memory_bytes"], "memory_bytes", minimum=MIN_MEMORY_BYTES, maximum=MAX_MEMORY_BYTES,
               integer=True)
    if "cpus" in opts:
        cpus_option(opts["cpus"], max_cpus)
    if "cpu_shares" in opts:
        number(opts["cpu_shares"], "cpu_shares", minimum=2, maximum=262144, integer=True)
    if "pids_limit" in opts:
        pids_limit_option(opts["pids_limit"])
    opts["env"] = env(opts.get("env"))
    restart_policy(opts.get("restart"))
    if "command" in opts:
        opts["command"] = command(opts["command"])
    size = (sum(len(a.encode("utf-8", "surrogatepass")) + 1 for a in opts.get("command") or [])
            + sum(len(k) + len(v.encode("utf-8", "surrogatepass")) + 2 for k, v in opts["env"].items()))
    if size > EXEC_ARGS_MAX_BYTES:
        raise InvalidArgument(f"command and env take {size} bytes, at most {_num(EXEC_ARGS_MAX_BYTES)}",
                              hint="execve refuses more (E2BIG); put large data in a file or a volume")
    if "volumes" in opts:
        opts["volumes"] = volume_specs(opts["volumes"])
    return opts


def exec_options(value: Any, *, max_output_bytes: int = EXEC_MAX_OUTPUT_BYTES) -> dict:
    """container_exec's options map, checked and normalised to {timeout_s
    (0.1-86400 s, default 300), max_output_bytes (0 to ``max_output_bytes``,
    default that cap), env (see ``env``; {} by default), stdin (bytes or
    None; a string is UTF-8 encoded)}.

    Raises: InvalidArgument naming the first bad option."""
    opts = options(value, EXEC_OPTIONS, "container_exec")
    timeout = number(opts.get("timeout_s", EXEC_DEFAULT_TIMEOUT_SECONDS), "timeout_s", minimum=0.1,
                     maximum=EXEC_MAX_TIMEOUT_SECONDS)
    cap = number(opts.get("max_output_bytes", max_output_bytes), "max_output_bytes", minimum=0,
                 maximum=max_output_bytes, integer=True)
    stdin = opts.get("stdin")
    if stdin is not None and not isinstance(stdin, (bytes, str)):
        raise InvalidArgument("stdin must be bytes or a string")
    if isinstance(stdin, str):
        stdin = stdin.encode()
    return {"timeout_s": float(timeout), "max_output_bytes": int(cap), "env": env(opts.get("env")),
            "stdin": stdin}


def enter_options(value: Any) -> dict:
    """container_enter's options map: {via: "tcp" | "ipc"} (absent: the
    transport the caller came by).  Raises: InvalidArgument."""
    opts = options(value, ENTER_OPTIONS, "container_enter")
    if opts.get("via") is not None and opts["via"] not in ("tcp", "ipc"):
        raise InvalidArgument(f"via must be tcp or ipc, got {opts['via']!r}")
    return opts


def stop_timeout(value: Any) -> float | None:
    """container_stop's grace period: None (the agent's default) or 0-3600 s."""
    if value is None:
        return None
    return number(value, "timeout_s", minimum=0, maximum=STOP_MAX_TIMEOUT_SECONDS)


def log_bytes(value: Any) -> int:
    """container_logs' max_bytes: an integer from 0 to 4 MiB."""
    return int(number(value, "max_bytes", minimum=0, maximum=LOG_MAX_BYTES, integer=True))


# ------------------------------------------------ volumes (agent and hub)
VOLUMES_MAX = 16
VOLUME_PATH_MAX_CHARS = 255
_VOLUME_PATH_RE = re.compile(r"^(/[A-Za-z0-9_.@+-]+)+$")
#: Container paths a volume may not be mounted on (or under): the kernel's
#: and LXC's own mounts, and dcfleet's files in the container.
VOLUME_FORBIDDEN_PATHS = ("/proc", "/sys", "/dev", "/etc/dcfleet", "/.dcfleet")
#: Container paths a volume may not be mounted on as a whole: an empty
#: volume there would hide the image's init, shell, libraries or config, and
#: the container would not start (LXC's "Failed to exec /sbin/init").  A
#: directory under them (/usr/local/data, /etc/myapp) is allowed.
VOLUME_SYSTEM_DIRS = ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/usr", "/usr/bin", "/usr/sbin",
                      "/usr/lib", "/usr/lib32", "/usr/lib64", "/usr/libx32", "/etc")


def volume_name(name: Any) -> str:
    """A volume name: the container-name rule (1-64 chars of
    ``[A-Za-z0-9_.-]``, starting with a letter or digit, no ``..``)."""
    if not isinstance(name, str) or not name or len(name) > NAME_MAX_CHARS or not _NAME_RE.match(name) \
            or ".." in name or name.endswith("."):
        raise InvalidArgument(f"bad volume name {name!r:.80}: use 1-{NAME_MAX_CHARS} letters, digits, '.', '_' "
                              "and '-', starting with a letter or digit, without '..'")
    return name


def volume_spec(value: Any) -> dict:
    """One volume of a container: ``"NAME:/path"`` (or {name, path}) ->
    {name, path}.  The path is absolute, made of ``[A-Za-z0-9_.@+-]``
    components (no ``.`` or ``..``), at most 255 chars, not ``/``, not on
    or under /proc, /sys, /dev, /etc/dcfleet or /.dcfleet, and not a
    system directory as a whole (VOLUME_SYSTEM_DIRS: /bin, /sbin, /lib*,
    /usr, /usr/bin, /usr/sbin, /usr/lib*, /etc).

    Raises: InvalidArgument."""
    if isinstance(value, dict) and set(value) == {"name", "path"}:
        name, path = value["name"], value["path"]
    elif isinstance(value, str) and ":" in value:
        name, path = value.split(":", 1)
    else:
        raise InvalidArgument(f"a volume must be NAME:/path, got {value!r:.80}")
    volume_name(name)
    if not isinstance(path, str) or len(path) > VOLUME_PATH_MAX_CHARS or not _VOLUME_PATH_RE.match(path) \
            or any(part in (".", "..") for part in path.split("/")):
        raise InvalidArgument(f"bad volume path {path!r:.80}: want an absolute path of [A-Za-z0-9_.@+-] "
                              "components, without . or ..")
    if any(path == f or path.startswith(f + "/") for f in VOLUME_FORBIDDEN_PATHS):
        raise InvalidArgument(f"volume path {path} is reserved (not on or under "
                              f"{', '.join(VOLUME_FORBIDDEN_PATHS)})")
    if path in VOLUME_SYSTEM_DIRS:
        raise InvalidArgument(f"volume path {path} would hide the image's {path} (its init, programs, libraries "
                              "or config): the container could not start",
                              hint="mount it on a directory of its own, e.g. /srv/data")
    return {"name": name, "path": path}


def volume_specs(value: Any) -> list[dict]:
    """A container's volumes: a list (or one string) of volume_spec, at
    most VOLUMES_MAX, each path once.  Returns [{name, path}].

    Raises: InvalidArgument."""
    items = [value] if isinstance(value, (str, dict)) else value
    if not isinstance(items, list) or len(items) > VOLUMES_MAX:
        raise InvalidArgument(f"volumes must be a list of at most {VOLUMES_MAX} NAME:/path")
    specs = [volume_spec(v) for v in items]
    paths = [s["path"] for s in specs]
    if len(set(paths)) != len(paths):
        raise InvalidArgument("volumes: a container path is given twice")
    return specs
LOG_OPTIONS = {"follow": "stream what is written as it comes (ends when the container stops)",
               "since": "only records from then on: Unix seconds, or an age like 90s, 10m, 2h, 1d",
               "tail": "only the last N records (0-100000)",
               "timestamps": "dcctl prints each record's time (the JSON always has at)"}
_AGE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
LOG_MAX_TAIL = 100000


def since_time(value: Any, now: float, what: str = "since") -> float:
    """A ``--since``: Unix seconds (a number, not in the future), or an age
    ("90s", "10m", "2h", "1d", counted back from ``now``).  Returns Unix s.
    Raises: InvalidArgument."""
    if isinstance(value, str):
        text = value.strip()
        unit = _AGE_UNITS.get(text[-1:])
        try:
            amount = float(text[:-1]) if unit else float(text)
        except ValueError:
            amount = -1.0
        if amount < 0 or amount != amount or amount == float("inf"):
            raise InvalidArgument(f"{what} {value!r}: give Unix seconds or an age like 90s, 10m, 2h, 1d")
        value = now - amount * unit if unit else amount
    at = number(value, what, minimum=0, maximum=now + 1)  # a second's slack for clocks read apart
    return float(at)


def log_options(value: Any, now: float) -> dict:
    """container_logs' options: {follow: bool, since: Unix s or None, tail:
    int or None, timestamps: bool}.  Raises: InvalidArgument (an unknown
    option, a since in the future, a tail out of 0..100000)."""
    opts = options(value, LOG_OPTIONS, "container_logs")
    for key in ("follow", "timestamps"):
        if not isinstance(opts.get(key, False), bool):
            raise InvalidArgument(f"{key} must be true or false, got {opts[key]!r}")
    since = opts.get("since")
    tail = opts.get("tail")
    return {"follow": opts.get("follow", False), "timestamps": opts.get("timestamps", False),
            "since": None if since is None else since_time(since, now),
            "tail": None if tail is None else int(number(tail, "tail", minimum=0, maximum=LOG_MAX_TAIL,
                                                         integer=True))}

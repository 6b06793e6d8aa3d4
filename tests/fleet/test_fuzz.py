"""A property-based fuzz of every served method of a real agent and a real
hub, over their local ipc endpoints: random arity, random types, and nested
option maps made of each method's real option keys with wrong-typed values.
The property: every call is answered within its timeout with a result or a
typed error other than InternalError, and both services are up and true
to LXC afterwards.  (The hub's own Unreachable about an agent it lost
during a forwarded call is a typed answer; our client losing the service
under test is a failure.)

CI runs a few hundred calls per service; ``DCF_SOAK=1`` runs tens of
thousands.  ``DCF_FUZZ_SEED=N`` replays a run (the seed is printed on
failure).

What the fuzz may not do: the agent is a throwaway one (a one-host fleet
with its own prefix, namespace, state dir and LXC path), and no generated
value names anything real but one container, REAL_CONTAINER (so calls get
past the lookup into LXC): no image the hosts have (nothing new is
created), no host of the fleet, no endpoint (a string never contains
"://"), no existing path.  ``ops_run`` (host shell commands, called directly
or through broadcast and queue) only ever gets a command from
HARMLESS_COMMANDS; stops and execs are bounded to a few seconds.
"""
from __future__ import annotations

import math
import os
import random
import secrets
import subprocess
import time

import pytest
import zerorpc

from dcctl import errors, validate, wire
from hub import placement as hubplacement
from ops import fleet as fleetmod

pytestmark = pytest.mark.lxc

SOAK = os.environ.get("DCF_SOAK") == "1"
CALLS_PER_SERVICE = int(os.environ.get("DCF_FUZZ_CALLS") or (20000 if SOAK else 400))
CALL_TIMEOUT_SECONDS = 60.0
#: pytest-timeout's limit for one fuzz run (a soak's 20,000 calls take about 5-10 minutes).
RUN_TIMEOUT_SECONDS = 3600 if SOAK else 300
REAL_CONTAINER = "fz.real"
HARMLESS_COMMANDS = ("true", ":", "echo fuzz", "exit 3", "printf '%s' fuzz", "", "   ", "true\x00")
BUILTINS = ("_zerorpc_list", "_zerorpc_name", "_zerorpc_ping", "_zerorpc_help", "_zerorpc_args",
            "_zerorpc_inspect", "_dc_bad_request", "_dc_refuse")

# Each method's real option keys (method, parameter) -> keys, from the code that checks them.
IMPORT_OPTIONS = ("exposed_ports", "env", "command", "stop_signal", "init", "templates")
OPTION_KEYS = {
    ("container_create", "options"): tuple(validate.CREATE_OPTIONS),
    ("create_container", "options"): tuple(hubplacement.CREATE_OPTIONS),
    ("container_exec", "options"): tuple(validate.EXEC_OPTIONS),
    ("container_enter", "options"): tuple(validate.ENTER_OPTIONS),
    ("image_import", "options"): IMPORT_OPTIONS,
    ("image_build", "options"): ("suite", "mirror"),
    ("broadcast", "options"): ("target", "timeout_s", "fire_and_forget"),
    ("queue", "options"): ("timeout_s", "idempotent"),
    ("host_register", "info"): ("name", "endpoint", "address", "labels", "capacity"),
    ("host_heartbeat", "summary"): ("capacity", "metrics", "containers"),
}
NESTED_KEYS = ("env", "label", "labels", "capacity", "metrics", "memory_reservable_bytes", "container_slots",
               "proto", "port", "name", "state", "containers")


@pytest.fixture(scope="module")
def fleet():
    """A throwaway one-host fleet (hub and agent) of its own prefix."""
    if os.geteuid() != 0:
        pytest.skip("needs root, LXC and network namespaces")
    prefix = "dfz" + secrets.token_hex(2)
    state = fleetmod.up(prefix, 1, fleetmod.free_subnet(207), heartbeat_s=1.0)
    try:
        with wire.connect(state["hub"]["ipc"], timeout_s=120) as hub:
            hub.call("create_container", "busybox", REAL_CONTAINER, {"memory_bytes": 64 << 20})
        yield state
    finally:
        left = fleetmod.down(prefix)
        assert not left, left


# ------------------------------------------------------------ the generator

class Gen:
    """Random wire values from a seeded generator (replayable)."""

    TEXTS = ("", " ", "x", "a.b", "..", "-rf", "/", "../../x", "%s%n", "é☃", "\u202e", "\x00", "a" * 70,
             "1", "-1", "0.5", "true", "no", "always", "on-failure:99999", "tcp", "udp", "spread", "binpack",
             "label:zone=a", "*", "ipc", "SIGPWR", "/nonexistent/fz", "fz.no.such", "fz@1234", "sha256:00",
             REAL_CONTAINER, REAL_CONTAINER, REAL_CONTAINER)

    def __init__(self, rng: random.Random):
        self.r = rng

    def text(self) -> str:
        r = self.r
        if r.random() < 0.6:
            return r.choice(self.TEXTS)
        alphabet = "abcxyz019._-/ :@*=\t\né☃\U0001f600"
        text = "".join(r.choice(alphabet) for _ in range(r.randint(0, 24)))
        while "://" in text:  # never an endpoint
            text = text.replace("://", ":/")
        return text

    def number(self):
        return self.r.choice((0, 1, -1, 2, 3, 7, 80, 65535, 65536, 1 << 31, (1 << 63) - 1, -(1 << 63),
                              (1 << 64) - 1, self.r.randint(-10**6, 10**6), 0.0, -0.0, 0.5, 1e-9, 1e308,
                              math.nan, math.inf, -math.inf, self.r.uniform(-1e6, 1e6)))

    def scalar(self):
        kind = self.r.randrange(6)
        if kind == 0:
            return None
        if kind == 1:
            return self.r.random() < 0.5
        if kind == 2:
            return self.number()
        if kind == 3:
            return self.r.randbytes(self.r.randint(0, 32))
        return self.text()

    def value(self, depth: int = 0):
        kind = self.r.randrange(10)
        if depth >= 3 or kind < 6:
            return self.scalar()
        if kind < 8:
            return [self.value(depth + 1) for _ in range(self.r.randint(0, 4))]
        keys = NESTED_KEYS if self.r.random() < 0.5 else None
        return self.mapping(keys, depth + 1)

    def mapping(self, keys=None, depth: int = 0) -> dict:
        out = {}
        for _ in range(self.r.randint(0, 4)):
            key = self.r.choice(keys) if keys and self.r.random() < 0.85 else self.text()
            out[key] = self.value(depth)
        if self.r.random() < 0.05:
            out[self.r.choice((1, -7, 2.5, b"k", True, None))] = self.value(depth)  # refused on the wire
        return out

    def of_type(self, type_name: str):
        """A value of the declared type, often (not always) plausible."""
        r = self.r
        choice = r.choice([t.strip() for t in type_name.split("|")])
        if choice == "str":
            return self.text()
        if choice == "int":
            return r.choice((0, 1, 5, 80, 4096, 65536, -1, r.randint(-1000, 1 << 40)))
        if choice == "float":
            return r.choice((0.0, 0.1, 1.5, 5, -1.0, math.nan, math.inf, 3600.0, 1e9))
        if choice == "bool":
            return r.random() < 0.5
        if choice in ("list", "tuple"):
            return [self.value(1) for _ in range(r.randint(0, 4))]
        if choice == "dict":
            return self.mapping(NESTED_KEYS)
        if choice == "None":
            return None
        return self.value()

    def args(self, method: str, params: list[dict], agent_methods: dict | None):
        """A random argument list for ``method``: usually its own arity and
        types, sometimes fewer or more, sometimes any types at all."""
        r = self.r
        n = len(params)
        arity = n if r.random() < 0.6 else r.randint(0, n + 2)
        out = []
        for i in range(arity):
            p = params[i] if i < n else {"name": "extra", "type": "any"}
            keys = OPTION_KEYS.get((method, p["name"]))
            if keys and r.random() < 0.8:
                out.append(self.mapping(keys))
            elif p["name"] == "name" and r.random() < 0.3:
                out.append(REAL_CONTAINER)
            elif p["name"] == "method" and agent_methods and r.random() < 0.85:
                out.append(r.choice(sorted(agent_methods)))
            elif p["name"] == "args" and agent_methods and i > 0 and isinstance(out[0], str) \
                    and out[0] in agent_methods and r.random() < 0.8:
                out.append(self.args(out[0], agent_methods[out[0]]["args"], None))
            elif r.random() < 0.75:
                out.append(self.of_type(p["type"]))
            else:
                out.append(self.value())
        return out


def defuse(method: str, args: list) -> list:
    """Keep the fuzz harmless: ops_run gets only HARMLESS_COMMANDS (also
    inside broadcast and queue), image_build never builds, and no path
    argument names an existing file."""
    args = list(args)
    if method in ("broadcast", "queue") and len(args) > 1 and isinstance(args[1], list) \
            and isinstance(args[0], str):
        args[1] = defuse(args[0], args[1])
    if method == "ops_run" and args and isinstance(args[0], str):
        args[0] = HARMLESS_COMMANDS[len(args[0]) % len(HARMLESS_COMMANDS)]
    if method == "image_build" and args and args[0] == "debian":
        args[0] = "nodebian"
    if method == "image_import" and args and isinstance(args[0], str) and os.path.lexists(args[0]):
        args[0] = "/nonexistent/fz.tar"
    if method == "container_destroy" and args and args[0] == REAL_CONTAINER:
        args[0] = "fz.no.such"  # keep it for the calls to come
    if method == "container_stop" and len(args) > 1 and _number(args[1]) and args[1] > 5:
        args[1] = 5.0  # a stop waits up to its timeout for the container's init
    if method == "container_exec" and len(args) >= 2:
        if len(args) == 2 or args[2] is None:
            args[2:3] = [{"timeout_s": 10.0}]  # the default is 300 s
        elif isinstance(args[2], dict) and (args[2].get("timeout_s") is None or (
                _number(args[2]["timeout_s"]) and args[2]["timeout_s"] > 10)):
            args[2] = {**args[2], "timeout_s": 10.0}
    return args


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _strings(value):
    """Every str in ``value``, map keys included."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _strings(k)
            yield from _strings(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _strings(v)


def _has_bad_key(value, depth: int = 0) -> bool:
    if depth > 10:
        return False
    if isinstance(value, dict):
        return any(not isinstance(k, str) or _has_bad_key(v, depth + 1) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return any(_has_bad_key(v, depth + 1) for v in value)
    return False


# ------------------------------------------------------------ the property

def _outcome(client: wire.RpcClient, stock: zerorpc.Client, method: str, args: list) -> str:
    """"ok", or the typed error's name, of one call.  Arguments with a
    non-string map key go through the stock zerorpc client, since ours
    refuses to send them (which is checked too)."""
    if _has_bad_key(args):
        try:
            client.call(method, *args)
            return "sent-unsendable"
        except errors.InvalidArgument:
            pass
        except errors.DcError as exc:
            return f"sent-unsendable, then {type(exc).__name__}"
        try:
            stock(method, *args)
            return "ok"
        except zerorpc.RemoteError as exc:
            return exc.name
        except zerorpc.TimeoutExpired:
            return "CallTimeout"
    try:
        client.call(method, *args)
        return "ok"
    except errors.DcError as exc:
        _last_message[0] = str(exc)
        if isinstance(exc, errors.Unreachable) and client.endpoint not in str(exc):
            # the hub's typed answer that it lost an agent (not our client losing the hub)
            return "Unreachable (forwarded)"
        return type(exc).__name__


_last_message = [""]  # the message of the last typed error, for the report


def fuzz(endpoint: str, seed: int, calls: int, agent_methods: dict | None = None) -> dict:
    """Make ``calls`` random calls to the server at ``endpoint``; returns
    {outcomes {name: count}, failures [(method, args, outcome)]}."""
    rng = random.Random(seed)
    gen = Gen(rng)
    outcomes: dict[str, int] = {}
    real: dict[str, int] = {}  # outcomes of the calls naming REAL_CONTAINER
    failures = []
    client = wire.connect(endpoint, timeout_s=CALL_TIMEOUT_SECONDS)
    stock = zerorpc.Client(timeout=CALL_TIMEOUT_SECONDS, heartbeat=5)
    stock.connect(endpoint)
    try:
        served = client.call("_zerorpc_inspect")["methods"]
        names = sorted(served)
        for _ in range(calls):
            pick = rng.random()
            if pick < 0.9:
                method = rng.choice(names)
                params = served[method]["args"]
            elif pick < 0.97:
                method, params = rng.choice(BUILTINS), [{"name": "m", "type": "str"}]
            else:
                method, params = gen.text() or "nosuch", []
            args = defuse(method, gen.args(method, params, agent_methods))
            outcome = _outcome(client, stock, method, args)
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
            if REAL_CONTAINER in args:
                real[outcome] = real.get(outcome, 0) + 1
            if outcome in ("InternalError", "CallTimeout", "Unreachable") or outcome.startswith("sent-unsendable"):
                failures.append((method, args, f"{outcome} ({_last_message[0]})"))
                if sum(not f[2].startswith("InternalError") for f in failures) >= 3:
                    break  # the service is stuck: no point waiting out more timeouts
    finally:
        stock.close()
        client.close()
    return {"outcomes": outcomes, "real": real, "failures": failures}


def _seed() -> int:
    return int(os.environ.get("DCF_FUZZ_SEED") or secrets.randbits(32))


def _lxc_names(lxc_path: str) -> set[str]:
    return {n for n in os.listdir(lxc_path) if os.path.exists(os.path.join(lxc_path, n, "config"))} \
        if os.path.isdir(lxc_path) else set()


def _lxc_state(host: dict, name: str) -> str:
    """"running" or "stopped", as lxc-info says (in the host's namespaces)."""
    out = subprocess.run(["ip", "netns", "exec", host["netns"], "lxc-info", "-P", host["lxc_path"], "-n", name,
                          "-s", "-H"], capture_output=True, text=True, timeout=30).stdout.strip().lower()
    return out or "unknown"


def _assert_up_and_true(fleet) -> None:
    """Both services answer; the host is alive at the hub; the agent's
    containers are exactly those LXC has, each with the state LXC gives it,
    and the hub lists every one of them (it may keep a record of one the
    agent fuzz destroyed behind its back)."""
    host = fleet["hosts"][0]
    with wire.connect(fleet["hub"]["ipc"], timeout_s=30) as hub, wire.connect(host["ipc"], timeout_s=30) as agent:
        assert hub.call("_zerorpc_ping")[0] == "pong" and agent.call("_zerorpc_ping")[0] == "pong"
        deadline = time.monotonic() + 30
        while True:
            rows = hub.call("hosts")
            if [h["state"] for h in rows] == ["alive"]:
                break
            assert time.monotonic() < deadline, f"host not alive after the fuzz: {rows}"
            time.sleep(0.2)
        deadline = time.monotonic() + 60  # a fire-and-forget broadcast may still be at work
        while True:
            agent_view = {c["name"]: c["state"] for c in agent.call("container_ls")}
            lxc_view = {n: _lxc_state(host, n) for n in _lxc_names(host["lxc_path"])}
            if agent_view == lxc_view:
                break
            assert time.monotonic() < deadline, f"agent {agent_view} but LXC {lxc_view}"
            time.sleep(0.5)
        assert set(agent_view) <= {c["name"] for c in hub.call("container_ls")}
        assert [i["name"] for i in agent.call("image_ls")] == ["busybox"]


def _report(kind: str, seed: int, result: dict) -> str:
    lines = [f"{kind} fuzz (DCF_FUZZ_SEED={seed}) outcomes {result['outcomes']}",
             f"  of the calls naming {REAL_CONTAINER}: {result['real']}"]
    for method, args, outcome in result["failures"][:10]:
        lines.append(f"  {outcome}: {method}{tuple(args)!r}"[:600])
    return "\n".join(lines)


@pytest.mark.timeout(RUN_TIMEOUT_SECONDS)
def test_fuzz_agent_answers_every_call_with_a_typed_error_or_a_result(fleet):
    seed = _seed()
    result = fuzz(fleet["hosts"][0]["ipc"], seed, CALLS_PER_SERVICE)
    print(_report("agent", seed, result))
    assert not result["failures"], _report("agent", seed, result)
    assert sum(result["outcomes"].values()) == CALLS_PER_SERVICE
    assert result["outcomes"].get("InvalidArgument", 0) > CALLS_PER_SERVICE // 10
    _assert_up_and_true(fleet)


@pytest.mark.timeout(RUN_TIMEOUT_SECONDS)
def test_fuzz_hub_answers_every_call_with_a_typed_error_or_a_result(fleet):
    seed = _seed()
    with wire.connect(fleet["hosts"][0]["ipc"], timeout_s=30) as agent:
        agent_methods = agent.call("_zerorpc_inspect")["methods"]
    result = fuzz(fleet["hub"]["ipc"], seed, CALLS_PER_SERVICE, agent_methods)
    print(_report("hub", seed, result))
    assert not result["failures"], _report("hub", seed, result)
    assert sum(result["outcomes"].values()) == CALLS_PER_SERVICE
    assert result["outcomes"].get("InvalidArgument", 0) > CALLS_PER_SERVICE // 10
    _assert_up_and_true(fleet)


def test_generated_calls_never_reach_the_host_shell_with_other_commands():
    """The fuzz's own safety: whatever the generator makes, ops_run (direct,
    broadcast or queued) only ever sees HARMLESS_COMMANDS, and nothing names
    an endpoint."""
    gen = Gen(random.Random(7))
    agent = {"ops_run": {"args": [{"name": "command", "type": "str"}, {"name": "timeout_s", "type": "float"},
                                  {"name": "max_output_bytes", "type": "int"}]}}
    hub_params = [{"name": "method", "type": "str"}, {"name": "args", "type": "list | None"},
                  {"name": "options", "type": "dict | None"}]
    for _ in range(3000):
        for method, params in (("ops_run", agent["ops_run"]["args"]), ("broadcast", hub_params),
                               ("queue", hub_params)):
            args = defuse(method, gen.args(method, params, agent))
            inner = args if method == "ops_run" else (
                args[1] if len(args) > 1 and args[:1] == ["ops_run"] and isinstance(args[1], list) else [])
            if inner and isinstance(inner[0], str):
                assert inner[0] in HARMLESS_COMMANDS
            assert not any("://" in s for s in _strings(args))


@pytest.mark.parametrize("server", ["agent", "hub"])
def test_real_services_answer_hostile_frames(fleet, server):
    """Frames no client of ours would send, on a real agent and hub:
    requests msgpack 1.x would drop (integer map keys, invalid UTF-8,
    nesting past its stack) are answered with InvalidArgument; garbage
    without a message id is ignored; the service answers afterwards."""
    import msgpack
    import zmq

    endpoint = fleet["hosts"][0]["ipc"] if server == "agent" else fleet["hub"]["ipc"]
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    sock.rcvtimeo = int(CALL_TIMEOUT_SECONDS * 1000)
    sock.connect(endpoint)

    def header(msgid: bytes) -> bytes:
        return msgpack.packb({"message_id": msgid, "v": 3})

    def answer(msgid: bytes):
        while True:
            blob = sock.recv_multipart()[-1]
            head, name, args = msgpack.unpackb(blob, raw=False)
            if head.get("response_to") == msgid and name != "_zpc_hb":
                return name, args

    try:
        for junk in (b"", b"\xc1\xc1", os.urandom(512), msgpack.packb([1, 2, 3]), msgpack.packb([{}, "x", []])):
            sock.send_multipart([b"", junk])
        requests = {
            b"f1": b"\x93" + header(b"f1") + msgpack.packb("container_ls") + msgpack.packb([{1: 2}]),
            b"f2": b"\x93" + header(b"f2") + msgpack.packb("container_inspect") + b"\x91\xa2\xff\xfe",
            b"f3": b"\x93" + header(b"f3") + msgpack.packb("hostinfo") + b"\x91" * 3000 + b"\xc0",
            b"f4": b"\x93" + header(b"f4") + msgpack.packb("container_ls") + msgpack.packb({"not": "a list"}),
        }
        for msgid, blob in requests.items():
            sock.send_multipart([b"", blob])
            name, args = answer(msgid)
            assert (name, args[0]) == ("ERR", "InvalidArgument"), (msgid, args)
        sock.send_multipart([b"", msgpack.packb([{"message_id": b"f5", "v": 3}, "_zerorpc_ping", []])])
        name, args = answer(b"f5")
        assert name == "OK" and args[0][0] == "pong"
    finally:
        sock.close()
        ctx.term()

"""dcctl.output: readable and JSON rendering, without a server."""
from __future__ import annotations

import io
import json

import pytest

from dcctl import output


def render(result):
    out, err = io.StringIO(), io.StringIO()
    code = output.render(result, out, err)
    return code, out.getvalue(), err.getvalue()


def test_to_jsonable_bytes():
    assert output.to_jsonable({"a": b"hi", "b": b"\xff", "c": (1, 2)}) == {
        "a": "hi", "b": {output.BASE64_KEY: "/w=="}, "c": [1, 2]}


def test_table_columns_in_first_seen_order():
    text = output.table_text([{"name": "a", "n": 1}, {"name": "bb", "extra": {"x": [1]}, "n": None}])
    assert text.splitlines() == ["name  n  extra", "a     1  -", 'bb    -  {"x":[1]}']


def test_kv_lines_nested():
    lines = output.kv_lines({"a": 1, "b": {"c": True, "d": {}}, "e": [], "f": [{"g": 1, "h": 2}, "x"],
                             "i": None})
    assert lines == ["a: 1", "b:", "  c: true", "  d: {}", "e: []", "f:", "  - g: 1", "    h: 2",
                     "  - x", "i: -"]


def test_kv_lines_long_scalar_lists_go_one_per_line():
    digests = ["ab" * 32, "cd" * 32]
    assert output.kv_lines({"id": "x", "removed_layers": digests, "freed_bytes": 3 << 20}) == [
        "id: x", "removed_layers:", f"  - {digests[0]}", f"  - {digests[1]}", "freed_bytes: 3.0 MiB"]


def test_scalars_and_lists():
    assert render("hello") == (0, "hello\n", "")
    assert render(None) == (0, "", "")
    assert render(["a", 1, False]) == (0, "a\n1\nfalse\n", "")
    assert render([]) == (0, "", "")


def test_exec_result():
    code, out, err = render({"exit_code": 300, "stdout": b"o\n", "stderr": b"e\n",
                             "stdout_truncated": True, "timed_out": True})
    assert code == 300 % 256 and out == "o\n"
    assert err.splitlines() == ["e", "dcctl: note: stdout was truncated", "dcctl: note: the command timed out"]
    assert output.exec_exit_code({"exit_code": None, "stdout": b""}) == 1
    code, out, err = render({"exit_code": 0, "stdout": b"started\n", "stderr": b"",
                             "stdout_incomplete": True, "stderr_incomplete": True})
    assert (code, out) == (0, "started\n")
    assert err.splitlines() == ["dcctl: note: a background process still holds the command's stdout/stderr; "
                                "what it writes later is not shown"]
    assert not output.is_exec_result({"exit_code": 0})


def test_stream_rendering():
    code, out, _ = render(iter([{"step": "pull", "done_bytes": 3}, "end"]))
    assert (code, out) == (0, "step=pull done_bytes=3\nend\n")
    buf = io.StringIO()
    output.render_json(iter([{"a": 1}, {"b": b"x"}]), buf)
    assert [json.loads(line) for line in buf.getvalue().splitlines()] == [{"a": 1}, {"b": "x"}]


def test_method_list_lines():
    assert output.method_list_lines({"ab": "First.\nMore.", "c": ""}) == ["ab  First.", "c   <undocumented>"]


# --------------------------------------------------------------- listing views
# Rows as the agent and the hub return them (shapes from agents/service.py and
# hub/service.py), with the long values that made lines ~250 columns wide.

NOW = 1_790_000_000.0
IMAGE_ID = "3f9a1c0be7d24e55a8b1f0c6d2e94a7b5c3d1e0f9a8b7c6d5e4f3a2b1c0d9e8f"
LAYER = "9c8b7a6f5e4d3c2b1a0f9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e0d9c8b"


def container_row(i, host=None, state="running", ports=2):
    row = {"name": f"jerome.awesome.webapp-{i}", "state": state, "image": "busybox", "image_id": IMAGE_ID,
           "address": f"10.217.0.{100 + i}", "created": NOW - 3600 * i, "desired": "running",
           "pid": 41000 + i,
           "ports": [{"proto": "tcp", "host_port": 20983 + j, "container_port": 80 + j} for j in range(ports)],
           "memory_limit_bytes": 256 << 20, "cpus": 0.5, "restart": "on-failure:10", "restart_count": 3,
           "last_exit": {"status": 137, "oom_killed": True, "at": NOW - 60, "ran_s": 12.5},
           "oom_killed": state != "running"}
    return {"host": host, **row} if host else row


def host_row(i):
    return {"name": f"dcops-host-{i}", "state": "alive", "endpoint": f"tcp://10.212.0.{10 + i}:7000",
            "address": f"10.212.0.{10 + i}", "labels": {"zone": "a", "disk": "ssd"},
            "memory_reservable_bytes": 6 << 30, "memory_reserved_bytes": 768 << 20,
            "memory_free_bytes": (6 << 30) - (768 << 20), "container_slots": 100, "containers": 3,
            "last_heartbeat": NOW - 1.2, "heartbeat_age_s": 1.2}


def hostinfo_row(i):
    return {"host": f"dcops-host-{i}", "status": "ok", "agent_version": "0.1.0", "agent_uptime_s": 5000.0,
            "metrics": {"cpu_count": 2, "cpu_percent": 12.5, "load_avg": [0.42, 0.3, 0.2],
                        "memory_total_bytes": 8 << 30, "memory_available_bytes": 5 << 30,
                        "memory_used_bytes": 3 << 30, "disk_total_bytes": 100 << 30,
                        "disk_free_bytes": 60 << 30, "net_bytes_sent": 123456789, "net_bytes_recv": 987654321,
                        "uptime_s": 86400 * 3, "boot_time": NOW - 86400 * 3},
            "containers": [{"name": "jerome.awesome.webapp-1", "state": "running", "address": "10.217.0.101",
                            "memory_bytes": 12 << 20, "memory_limit_bytes": 256 << 20, "cpu_seconds": 1.5}],
            "capacity": {"memory_reservable_bytes": 6 << 30, "memory_reserved_bytes": 256 << 20,
                         "memory_unreserved_bytes": (6 << 30) - (256 << 20), "container_slots": 100,
                         "containers": 1, "container_slots_free": 99}}


IMAGE_ROW = {"name": "busybox", "tag": "latest", "id": IMAGE_ID, "created": NOW - 7200, "size_bytes": 2_345_678,
             "layers": [LAYER], "exposed_ports": [{"proto": "tcp", "port": 80}],
             "command": ["/bin/sh", "-c", "httpd -f -p 80 -h /www && echo 'a long command line' > /dev/null"]}
NETWORK_AGENT = {"bridge": "dcbr0", "subnet": "10.217.0.0/24", "gateway": "10.217.0.1",
                 "port_range": [20000, 29999],
                 "mappings": [{"container": "jerome.awesome.webapp-1", "proto": "tcp", "host_port": 20983,
                               "container_address": "10.217.0.101", "container_port": 80}],
                 "addresses": {"jerome.awesome.webapp-1": "10.217.0.101", "jerome.awesome.db": "10.217.0.102"}}
EVENTS = [{"at": NOW - 30, "kind": "host_lost", "host": "dcops-host-2"},
          {"at": NOW - 20, "kind": "rescheduled", "name": "jerome.awesome.webapp-7", "from_host": "dcops-host-2",
           "host": "dcops-host-3", "attempt": 1, "ports": [{"proto": "tcp", "container_port": 80,
                                                            "host_port": 21001}]},
          {"at": NOW - 10, "kind": "reschedule_failed", "name": "jerome.awesome.webapp-8", "host": "dcops-host-1",
           "error": "NoCapacity: no host can take it (dcops-host-1: needs 1.5 GiB of memory, 1.0 GiB unreserved)"}]


def view(method, result, wide=False):
    out, err = io.StringIO(), io.StringIO()
    code = output.render(result, out, err, method=method, wide=wide, now=NOW)
    assert err.getvalue() == ""
    return code, out.getvalue().splitlines()


def assert_fits(lines):
    too_wide = [line for line in lines if len(line) > output.TABLE_WIDTH]
    assert not too_wide, too_wide


def test_container_ls_fits_with_short_ids_and_docker_ports():
    old = output.table_text([{"host": "dcops-host-1", **container_row(1)}]).splitlines()
    assert max(map(len, old)) > 200  # the wide table, as before
    rows = [container_row(i, host=f"dcops-host-{i % 3 + 1}", state="running" if i % 2 else "stopped")
            for i in range(1, 10)]
    rows.append({"host": "dcops-host-2", "name": "jerome.lost.one", "state": "unknown", "image_id": IMAGE_ID,
                 "ports": []})
    code, lines = view("container_ls", rows)
    assert code == 0
    assert_fits(lines)
    assert lines[0].split() == ["host", "name", "state", "image", "address", "ports", "age"]
    assert lines[1].split()[:5] == ["dcops-host-2", "jerome.awesome.webapp-1", "running", "busybox",
                                    "10.217.0.101"]
    assert lines[1].split()[5].startswith("20983->80/") and lines[1].split()[-1] == "60m"  # ports cut to fit
    one_port = view("container_ls", [container_row(1, host="dcops-host-2", ports=1)])[1]
    assert one_port[1].split() == ["dcops-host-2", "jerome.awesome.webapp-1", "running", "busybox",
                                   "10.217.0.101", "20983->80/tcp", "60m"]
    assert "stopped (oom)" in lines[2]
    assert lines[-1].split() == ["dcops-host-2", "jerome.lost.one", "unknown", IMAGE_ID[:12], "-", "-", "-"]
    # an agent's rows have no host column
    assert view("container_ls", [container_row(1)])[1][0].split()[0] == "name"


def test_many_ports_are_cut_to_fit():
    code, lines = view("container_ls", [container_row(1, host="dcops-host-1", ports=12)])
    assert_fits(lines)
    assert lines[1].split()[-2].endswith(output.ELLIPSIS) and "20983->80/tcp" in lines[1]
    code, wide = view("container_ls", [container_row(1, host="dcops-host-1", ports=12)], wide=True)
    assert "20994" in wide[1] and "last_exit" in wide[0] and IMAGE_ID in wide[1]


def test_hosts_fit_with_readable_sizes():
    code, lines = view("hosts", [host_row(i) for i in range(1, 4)])
    assert_fits(lines)
    assert lines[0].split() == ["name", "state", "address", "containers", "reserved", "heartbeat", "labels"]
    assert lines[1].split() == ["dcops-host-1", "alive", "10.212.0.11", "3/100", "768.0", "MiB/6.0", "GiB",
                                "1s", "ago", "zone=a,disk=ssd"]
    code, wide = view("hosts", [host_row(1)], wide=True)
    assert max(map(len, wide)) > 150 and "heartbeat_age_s" in wide[0] and "tcp://10.212.0.11:7000" in wide[1]


def test_image_ls_hostinfo_network_and_events_fit():
    code, lines = view("image_ls", [IMAGE_ROW, {**IMAGE_ROW, "name": "debian", "layers": [LAYER, LAYER]}])
    assert_fits(lines)
    assert lines[0].split() == ["name", "tag", "id", "age", "size", "layers", "ports", "command"]
    assert lines[1].split()[:8] == ["busybox", "latest", IMAGE_ID[:12], "2h", "2.2", "MiB", "1", "80/tcp"]
    hub_images = [{k: v for k, v in IMAGE_ROW.items() if k != "command"}]  # the hub has no command
    assert view("image_ls", hub_images)[1][0].split()[-1] == "ports"

    code, lines = view("hostinfo", [hostinfo_row(i) for i in range(1, 4)] + [{"host": "h4", "status": "timeout"}])
    assert_fits(lines)
    assert lines[-1].split() == ["h4", "timeout"] + ["-"] * 6
    assert lines[1].split() == ["dcops-host-1", "ok", "0.42", "3.0", "GiB/8.0", "GiB", "60.0", "GiB", "1/100",
                                "5.8", "GiB", "3d"]

    hub_net = [{"host": f"dcops-host-{i}", "address": f"10.212.0.{10 + i}", **NETWORK_AGENT} for i in (1, 2)]
    hub_net.append({"host": "dcops-host-3", "address": "10.212.0.13", "error": "timeout"})
    code, lines = view("network_ls", hub_net)
    assert_fits(lines)
    assert lines[1].split() == ["dcops-host-1", "10.212.0.11", "dcbr0", "10.217.0.0/24",
                                "20000-29999", "1", "2", "-"]
    code, lines = view("network_ls", NETWORK_AGENT)
    assert_fits(lines)
    assert lines[:4] == ["bridge: dcbr0", "subnet: 10.217.0.0/24", "gateway: 10.217.0.1", "port_range: 20000-29999"]
    assert lines[5].split() == ["container", "address", "ports"]
    assert lines[6].split() == ["jerome.awesome.webapp-1", "10.217.0.101", "20983->80/tcp"]
    assert lines[7].split() == ["jerome.awesome.db", "10.217.0.102", "-"]

    code, lines = view("events", EVENTS)
    assert_fits(lines)
    assert lines[0].split() == ["at", "kind", "host", "name", "detail"]
    assert lines[1].split()[2:] == ["host_lost", "dcops-host-2", "-", "-"]
    assert "from_host=dcops-host" in lines[2] and lines[3].endswith(output.ELLIPSIS)


def test_empty_listings_print_their_header():
    for method in output.VIEWS:
        code, lines = view(method, [])
        assert code == 0 and len(lines) == 1 and lines[0].split()[0] in ("name", "host", "at", "version", "app"), (
            method, lines)
        assert view(method, [], wide=True)[1] == lines


def test_broadcast_results_fit():
    long_line = "x" * 300
    result = {"summary": {"targeted": 3, "ok": 2, "error": 0, "timeout": 1, "duration_s": 0.25},
              "results": {"dcops-host-1": {"status": "ok", "result": hostinfo_row(1)},
                          "dcops-host-2": {"status": "ok", "result": {"host": "dcops-host-2", "exit_code": 0,
                                                                      "stdout": long_line, "stderr": ""}},
                          "dcops-host-3": {"status": "timeout"}}}
    code, lines = view("broadcast", result)
    assert code == 1
    assert_fits(lines)
    assert lines[0] == "targeted 3: 2 ok, 0 error, 1 timeout (250 ms)"
    assert lines[2].split()[:4] == ["dcops-host-1", "ok", "load", "0.42,"]
    kept = output.filter_result("broadcast", result, output.parse_filters("broadcast", ["status=timeout"]))
    assert list(kept["results"]) == ["dcops-host-3"] and kept["summary"] == result["summary"]


def test_cut_text():
    assert output.cut_text("abcdef", 6) == "abcdef"
    assert output.cut_text("abcdefg", 6) == "abcde" + output.ELLIPSIS
    assert output.cut_text("1->1/tcp, 2->2/tcp, 3->3/tcp", 22) == "1->1/tcp, 2->2/tcp, " + output.ELLIPSIS


def test_method_list_lines_fit():
    lines = output.method_list_lines({"container_connection_add": "Map a host port " + "and more " * 20})
    assert_fits(lines) and lines[0].endswith(output.ELLIPSIS)


def test_filters_docker_semantics():
    rows = [container_row(1, host="h1"), container_row(2, host="h2", state="stopped"),
            {**container_row(3, host="h1"), "name": "other.db", "image": "debian", "image_id": "ab" * 32}]

    def names(*specs):
        return [r["name"] for r in output.filter_result("container_ls", rows,
                                                        output.parse_filters("container_ls", list(specs)))]

    assert names() == [r["name"] for r in rows]
    assert names("name=webapp") == ["jerome.awesome.webapp-1", "jerome.awesome.webapp-2"]  # a part of the name
    assert names("host=h1", "host=h2", "state=stopped") == ["jerome.awesome.webapp-2"]  # OR within, AND across
    assert names("host=h1", "state=RUNNING") == ["jerome.awesome.webapp-1", "other.db"]
    assert names("image=debian") == ["other.db"] and names("image=abab") == ["other.db"]
    assert names(f"image=busybox@{IMAGE_ID[:8]}") == ["jerome.awesome.webapp-1", "jerome.awesome.webapp-2"]
    assert names("name=nothing") == []
    hosts = [host_row(1), {**host_row(2), "labels": {"zone": "b"}}]
    keep = output.filter_result("hosts", hosts, output.parse_filters("hosts", ["label=zone=b"]))
    assert [h["name"] for h in keep] == ["dcops-host-2"]
    assert len(output.filter_result("hosts", hosts, output.parse_filters("hosts", ["label=disk"]))) == 1
    images = output.filter_result("image_ls", [IMAGE_ROW], output.parse_filters("image_ls", [f"id={IMAGE_ID[:6]}"]))
    assert images == [IMAGE_ROW]  # full rows: --json prints them unchanged


@pytest.mark.parametrize("method, specs, text", [
    ("container_ls", ["colour=red"], "cannot filter on 'colour'"),
    ("container_ls", ["state"], "KEY=VALUE"),
    ("container_ls", ["=x"], "KEY=VALUE"),
    ("container_inspect", ["name=x"], "no listing to filter"),
    (None, ["name=x"], "no listing to filter"),
])
def test_bad_filters(method, specs, text):
    with pytest.raises(output.FilterError, match=text):
        output.parse_filters(method, specs)


def test_filter_on_a_map_is_refused():
    with pytest.raises(output.FilterError, match="not a listing"):
        output.filter_result("network_ls", NETWORK_AGENT, {"host": ["h1"]})


EVIL = "x\x1b[2J\x1b]0;owned\x07\u202ey\x9bz"


def test_text_from_a_host_or_container_cannot_drive_the_terminal():
    """Terminal controls in values a host or a container chose (event fields,
    names, error messages) are printed as escapes, in every readable form;
    bytes written as they are (exec output) are not touched."""
    seen = []
    _, lines = view("events", [{"index": 1, "at": 1796131100.0, "kind": "died", "host": "h1",
                                "container": EVIL, "detail": EVIL}])
    seen.append("\n".join(lines))
    for method, rows in (("container_ls", [{"name": "c", "image": EVIL, "ports": [{"proto": EVIL}],
                                            "command": [EVIL], "labels": {EVIL: EVIL}, "state": "running"}]),
                         ("image_ls", [{"name": EVIL, "tag": EVIL, "id": "0" * 64, "command": [EVIL]}])):
        _, lines = view(method, rows)
        seen.append("\n".join(lines))
    for result in ([{"name": EVIL, "state": "running"}], {"name": EVIL, "nested": {"k": EVIL}}, EVIL, [EVIL],
                   iter([{"step": EVIL}]), {"list": [EVIL, {"a": EVIL}]}, {EVIL: "key"},
                   {"text": f"line one\n{EVIL}\nline three"}, [{EVIL: 1}], iter([{EVIL: 1}])):
        code, out, err = render(result)
        assert code == 0 and err == ""
        seen.append(out)
    for text in seen:
        assert not any(c in text for c in "\x1b\x07\u202e\x9b"), repr(text)
        assert "\\x1b" in text or "\\u001b" in text, repr(text)
    code, out, _ = render({"exit_code": 0, "stdout": b"\x1b[1mbold\x1b[0m\n", "stderr": b""})
    assert out == "\x1b[1mbold\x1b[0m\n"  # a command's own output, as docker exec shows it
    assert output.safe_text("tab\tand\nnewline") == "tab\tand\nnewline"


def test_an_error_message_from_a_server_is_escaped(capsys):
    from dcctl import cli
    cli._report("NoSuchContainer", f"no container {EVIL!s}", f"try {EVIL}")
    err = capsys.readouterr().err
    assert not any(c in err for c in "\x1b\x07\u202e\x9b") and err.count("\\x1b") == 4, repr(err)

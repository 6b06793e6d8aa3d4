"""The container's exit record (/etc/dcfleet/exit, agents/supervisor.py):
written by a run script inside the container, so its root can put anything
there; the agent reads it in the host's namespace."""
from __future__ import annotations

import os

import pytest

from agents import supervisor


def _record(upper, text: str | None = None):
    d = upper / "etc" / "dcfleet"
    d.mkdir(parents=True, exist_ok=True)
    if text is not None:
        (d / "exit").write_text(text)
    return d / "exit"


@pytest.mark.parametrize("text, want", [("0\n", (0, False)), ("137 1\n", (137, True)), ("137 0\n", (137, False)),
                                        ("3", (3, False)), ("256\n", (None, False)), ("-1\n", (None, False)),
                                        ("99999999999999999999\n", (None, False)), ("x\n", (None, False)),
                                        ("", (None, False))])
def test_a_status_is_taken_only_from_0_to_255(tmp_path, text, want):
    _record(tmp_path, text)
    assert supervisor.read_exit(str(tmp_path)) == want


def test_no_record_is_none(tmp_path):
    assert supervisor.read_exit(str(tmp_path)) == (None, False)
    supervisor.remove_exit(str(tmp_path))  # nothing to remove: no error


def test_a_fifo_does_not_block_the_agent(tmp_path):
    os.mkfifo(_record(tmp_path))  # an open() of it for reading would wait for a writer for ever
    assert supervisor.read_exit(str(tmp_path)) == (None, False)


def test_a_symlink_never_leads_to_a_host_file(tmp_path):
    host = tmp_path / "host"
    (host / "dcfleet").mkdir(parents=True)
    (host / "dcfleet" / "exit").write_text("42\n")  # stands for a host file the link points at
    (host / "secret").write_text("7\n")
    upper = tmp_path / "upper"
    os.symlink(host / "secret", _record(upper))  # the record itself a link
    assert supervisor.read_exit(str(upper)) == (None, False)
    other = tmp_path / "other"
    other.mkdir()
    os.symlink(host, other / "etc")  # a directory on the way a link
    assert supervisor.read_exit(str(other)) == (None, False)
    supervisor.remove_exit(str(other))
    assert (host / "dcfleet" / "exit").read_text() == "42\n"  # the host's file is not removed
    supervisor.remove_exit(str(upper))  # removes the link itself, never its target
    assert not os.path.lexists(upper / "etc" / "dcfleet" / "exit") and (host / "secret").exists()


def test_a_huge_record_is_read_only_in_part(tmp_path):
    _record(tmp_path, "1" + " " * (1 << 20) + "1\n")  # the status, then a megabyte
    assert supervisor.read_exit(str(tmp_path)) == (1, False)


def test_remove_exit_removes_the_record(tmp_path):
    path = _record(tmp_path, "0\n")
    supervisor.remove_exit(str(tmp_path))
    assert not path.exists()

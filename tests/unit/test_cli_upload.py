"""dcctl's image file handling: which image_push words are local files,
and relative host paths made absolute for a local agent only."""
from __future__ import annotations

import os

from dcctl import upload


def test_image_push_tells_a_local_file_from_a_host_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ubuntu.tar").write_bytes(b"x")
    assert upload.looks_local("ubuntu.tar") and upload.looks_local("ubuntu.tar:24.04")
    assert upload.looks_local("./missing.tar")  # a path shape: dcctl says the file is missing
    assert not upload.looks_local("host-1")


def test_relative_paths_become_absolute_for_a_local_agent_only(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    local, remote = "ipc:///run/dcfleet/agent.sock", "tcp://10.0.0.1:7000"
    assert upload.absolute_paths("image_import", local, ["u.tar:1", "u"]) == [f"{tmp_path}/u.tar:1", "u"]
    assert upload.absolute_paths("image_export", local, ["u", "out.oci", {}]) == ["u", f"{tmp_path}/out.oci", {}]
    assert upload.absolute_paths("image_import", remote, ["u.tar", "u"]) == ["u.tar", "u"]
    assert upload.absolute_paths("image_import", local, ["/abs.tar", "u"]) == ["/abs.tar", "u"]
    assert upload.absolute_paths("container_ls", local, ["x"]) == ["x"]
    assert os.path.isabs(upload.absolute_paths("image_import", local, ["a"])[0])

"""agents.config: typed defaults, then a TOML file, then flags (flags win)."""
from __future__ import annotations

import pytest

from agents import config
from dcctl import errors


def _toml(tmp_path, text: str) -> str:
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return str(path)


def test_defaults_derive_their_paths():
    cfg = config.load(["--state-dir", "/srv/agent"], environ={})
    assert cfg.lxc_path == "/srv/agent/lxc" and cfg.keys_dir == "/srv/agent/keys"
    assert cfg.bridge == "dcbr0" and cfg.port_range == (20000, 29999) and cfg.stop_timeout_s == 10.0
    assert cfg.stale_cgroup_age_s == 60.0
    assert config.load(["--stale-cgroup-age-s", "5"], environ={}).stale_cgroup_age_s == 5.0


def test_file_then_flags(tmp_path):
    path = _toml(tmp_path, 'state_dir = "/srv/a"\nbridge = "filebr"\nport_range = [21000, 21999]\n'
                           'max_containers = 7\nlabels = { zone = "a" }\nstop_timeout_s = 3.5\n')
    cfg = config.load(["--config", path, "--bridge", "flagbr", "--label", "disk=ssd"], environ={})
    assert cfg.state_dir == "/srv/a" and cfg.bridge == "flagbr"  # the flag wins over the file
    assert cfg.port_range == (21000, 21999) and cfg.max_containers == 7 and cfg.stop_timeout_s == 3.5
    assert cfg.labels == {"disk": "ssd"}  # --label replaces the file's labels
    env_cfg = config.load([], environ={"DC_AGENT_CONFIG": path})
    assert env_cfg.bridge == "filebr" and env_cfg.labels == {"zone": "a"}
    assert config.load(["--config", path, "--port-range", "22000-22010"], environ={}).port_range == (22000, 22010)


@pytest.mark.parametrize("text, flags, match", [
    ('bogus = 1\n', [], "unknown setting"),
    ('subnet = "10.0.0.0/30"\n', [], "subnet"),
    ('port_range = [5, 1]\n', [], "port_range"),
    ('bridge = "a-name-far-too-long"\n', [], "bridge"),
    ('state_dir = "relative"\n', [], "absolute"),
    ('hub = "tcp://127.0.0.1:7100"\n', [], "hub_key"),
    ('not toml ==\n', [], "config file"),
    ('', ["--port-range", "20000"], "LOW-HIGH"),
    ('stale_cgroup_age_s = 4.5\n', [], "stale_cgroup_age_s"),
    ('', ["--stale-cgroup-age-s", "1e6"], "stale_cgroup_age_s"),
    ('default_pids_limit = 15\n', [], "default_pids_limit"),
    ('', ["--default-pids-limit", "4194305"], "default_pids_limit"),
    ('default_pids_limit = "4096"\n', [], "default_pids_limit"),
    ('tmpfs_size_bytes = 1024\n', [], "tmpfs_size_bytes"),
    ('', ["--tmpfs-tmp-size-bytes", "0"], "tmpfs_tmp_size_bytes"),
    ('tmpfs_tmp_size_bytes = 1.5e8\n', [], "tmpfs_tmp_size_bytes"),
    ('', ["--label", "zone=a\nb"], "label"),  # what the hub's host_register would refuse
    ('', ["--label", "k" * 64 + "=v"], "label"),
    ('', ["--advertise-address", "host.example"], "advertise_address"),
    ('', ["--advertise-address", "0.0.0.0"], "advertise_address"),
    ('', ["--listen", "tcp://0.0.0.0:7000", "--hub", "tcp://10.0.0.1:7100", "--hub-key", "k" * 40], "registers"),
    ('', ["--listen", "tcp://*:7000", "--hub", "tcp://10.0.0.1:7100", "--hub-key", "k" * 40], "registers"),
])
def test_bad_settings_are_named(tmp_path, text, flags, match):
    with pytest.raises(errors.InvalidArgument, match=match):
        config.load(["--config", _toml(tmp_path, text), *flags], environ={})


def test_missing_file_is_invalid_argument(tmp_path):
    with pytest.raises(errors.InvalidArgument, match="config file"):
        config.load(["--config", str(tmp_path / "none.toml")], environ={})


def test_pid_limit_and_tmpfs_size_settings(tmp_path):
    cfg = config.load([], environ={})
    assert (cfg.default_pids_limit, cfg.tmpfs_tmp_size_bytes, cfg.tmpfs_size_bytes) == (4096, 256 << 20, 64 << 20)
    cfg = config.load(["--config", _toml(tmp_path, "default_pids_limit = 100\ntmpfs_size_bytes = 8388608\n"),
                       "--default-pids-limit", "200", "--tmpfs-tmp-size-bytes", "33554432"], environ={})
    assert (cfg.default_pids_limit, cfg.tmpfs_tmp_size_bytes, cfg.tmpfs_size_bytes) == (200, 32 << 20, 8 << 20)

"""A release's config from deploy's options (hub/apps.py) and the volume
grammar (dcctl/validate.py): offline, every rule that refuses input."""
from __future__ import annotations

import pytest

from dcctl import errors, validate
from hub import apps


def test_defaults_are_dokkus_checks_and_the_apps_own_route():
    cfg = apps.release_config("web", None, None, "dcf.test")
    assert cfg["replicas"] == 1 and cfg["routes"] == ["web.dcf.test"] and cfg["env"] == {}
    assert cfg["check"] == {"path": None, "wait_s": 5.0, "timeout_s": 30.0, "attempts": 5}
    assert cfg["keep"] == 5 and cfg["volumes"] == [] and cfg["command"] is None


def test_options_not_given_are_the_previous_releases_and_env_merges():
    v1 = apps.release_config("web", {"replicas": 3, "route": ["b.dcf.test", "a.dcf.test"], "env": {"A": "1"},
                                     "check": "/health", "check_wait_s": 0.5, "volume": "data:/srv"}, None, "dcf.test")
    v2 = apps.release_config("web", {"env": {"B": "2"}}, v1, "dcf.test")
    assert v2["replicas"] == 3 and v2["routes"] == ["a.dcf.test", "b.dcf.test"]
    assert v2["env"] == {"A": "1", "B": "2"} and v2["check"]["path"] == "/health" and v2["check"]["wait_s"] == 0.5
    assert v2["volumes"] == [{"name": "data", "path": "/srv"}]


@pytest.mark.parametrize("options", [
    {"replicas": 0}, {"replicas": 33}, {"replicas": "2"}, {"route": "Bad_Name"}, {"route": []},
    {"env": {"1X": "a"}}, {"check": "health"}, {"check": "/a b"}, {"check_attempts": 0}, {"retire_s": -1},
    {"volume": "x:/proc"}, {"volume": ["a:/srv", "b:/srv"]}, {"nonsense": 1}, {"memory_bytes": 1},
    {"pids_limit": 8}, {"pids_limit": "100"},
])
def test_bad_options_are_refused(options):
    with pytest.raises(errors.InvalidArgument):
        apps.release_config("web", options, None, "dcf.test")


@pytest.mark.parametrize("name", ["", "Web", "web_1", "-web", "web-", "a" * 41, "web.app", 7])
def test_bad_app_names(name):
    with pytest.raises(errors.InvalidArgument):
        apps.app_name(name)


def test_release_numbers():
    assert apps.release_number("v12") == 12 and apps.release_number("3") == 3 and apps.release_number(4) == 4
    for bad in ("v0", "x1", "", -1, True, "v1.2"):
        with pytest.raises(errors.InvalidArgument):
            apps.release_number(bad)


def test_volume_specs():
    assert validate.volume_specs("d:/srv/data") == [{"name": "d", "path": "/srv/data"}]
    assert validate.volume_specs([{"name": "d", "path": "/x"}]) == [{"name": "d", "path": "/x"}]
    for bad in ("d", "d:", ":/x", "d:/", "d:x", "d:/dev/sda", "d:/sys", "d:/a/./b", "d:/a\nb", "..:/x",
                ["d:/a"] * 17, 5):
        with pytest.raises(errors.InvalidArgument):
            validate.volume_specs(bad)


def test_volume_option_names_point_at_each_other():
    """deploy's option is ``volume``, create_container's ``volumes``: a
    wrong one is refused with a hint naming the right one."""
    with pytest.raises(errors.InvalidArgument) as err:
        validate.create_options({"volume": "d:/srv"})
    assert "'volumes'" in (err.value.hint or "")
    with pytest.raises(errors.InvalidArgument) as err:
        apps.release_config("web", {"volumes": "d:/srv"}, None, "dcf.test")
    assert "'volume'" in (err.value.hint or "")
    with pytest.raises(errors.InvalidArgument) as err:
        validate.create_options({"zzz": 1})
    assert err.value.hint is None


@pytest.mark.parametrize("path", ["/bin", "/sbin", "/lib", "/lib64", "/usr", "/usr/lib", "/etc", "/.dcfleet/x"])
def test_volumes_may_not_hide_the_images_system_dirs(path):
    with pytest.raises(errors.InvalidArgument, match="hide|reserved"):
        validate.volume_specs(f"d:{path}")


def test_volumes_under_system_dirs_are_allowed():
    assert validate.volume_specs(["a:/usr/local/data", "b:/etc/myapp"])[1] == {"name": "b", "path": "/etc/myapp"}


def test_pids_limit_is_kept_from_the_previous_release():
    assert apps.release_config("web", None, None, "dcf.test")["pids_limit"] is None
    v1 = apps.release_config("web", {"pids_limit": 100}, None, "dcf.test")
    assert apps.release_config("web", {"replicas": 2}, v1, "dcf.test")["pids_limit"] == 100
    assert apps.release_config("web", {"pids_limit": 200}, v1, "dcf.test")["pids_limit"] == 200

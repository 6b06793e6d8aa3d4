import pytest

from dcctl import errors, validate


@pytest.mark.parametrize("name", ["", " ", "a b", "a/b", "..", "a..b", "-a", ".a", "a.", "x" * 65, "é", "a\nb"])
def test_bad_container_names(name):
    with pytest.raises(errors.InvalidArgument):
        validate.container_name(name)


@pytest.mark.parametrize("name", ["a", "jerome.awesome.web", "x" * 64, "A_b-9.c"])
def test_good_container_names(name):
    assert validate.container_name(name) == name


@pytest.mark.parametrize("value", [0, 65536, -1, True, "80", 80.0, None])
def test_bad_ports(value):
    with pytest.raises(errors.InvalidArgument):
        validate.port(value)


def test_protocol_env_command_options():
    assert validate.protocol("udp") == "udp"
    with pytest.raises(errors.InvalidArgument):
        validate.protocol("sctp")
    with pytest.raises(errors.InvalidArgument):
        validate.env({"A-B": "x"})
    with pytest.raises(errors.InvalidArgument):
        validate.env({"A": 1})
    assert validate.command("echo hi") == ["/bin/sh", "-c", "echo hi"]
    with pytest.raises(errors.InvalidArgument):
        validate.command([])
    with pytest.raises(errors.InvalidArgument):
        validate.options({"nope": 1}, {"yes": ""}, "x")


@pytest.mark.parametrize("value", [15, 0, -1, 4194305, 50.0, "50", True, [50]])
def test_bad_pids_limits(value):
    with pytest.raises(errors.InvalidArgument, match="pids_limit must be an integer from 16 to 4194304"):
        validate.create_options({"pids_limit": value})


def test_pids_limit_bounds_are_kept():
    assert validate.create_options({"pids_limit": 16})["pids_limit"] == 16
    assert validate.create_options({"pids_limit": 4194304})["pids_limit"] == 4194304
    assert "pids_limit" not in validate.create_options({"pids_limit": None})

"""dcctl build's command line: ``-t NAME[:TAG]`` as docker's, --build-arg
K=V repeated, unknown flags and a missing -t refused before anything is
packed or sent."""
from __future__ import annotations

import pytest

from dcctl import build, errors
from dcctl.cli.args import UsageError, split_argv


def test_dash_t_is_the_image_name_for_build_only():
    cmd = split_argv(["build", "./app", "-t", "myapp:v2", "--build-arg", "A=1", "--build-arg", "B=x=y",
                      "--json"], {})
    assert cmd.method == "build" and cmd.words == ["./app"] and cmd.json
    name, opts = build.parse_flags(cmd.flags)
    assert name == "myapp:v2" and opts == {"build_args": {"A": "1", "B": "x=y"}}
    with pytest.raises(UsageError, match="unknown option -t"):
        split_argv(["container_ls", "-t", "x"], {})
    with pytest.raises(UsageError, match="-t needs a value"):
        split_argv(["build", "./app", "-t"], {})


@pytest.mark.parametrize("flags,words", [
    ([], "needs -t"),
    ([("t", "a"), ("squash", "true")], "no --squash"),
    ([("t", "a"), ("build-arg", "NOEQUALS")], "NAME=VALUE"),
    ([("t", "a"), ("timeout-s", "soon")], "seconds"),
])
def test_bad_flags_refused(flags, words):
    with pytest.raises(errors.InvalidArgument, match=words):
        build.parse_flags(flags)


def test_bad_context_refused_before_any_call(tmp_path):
    class NoCalls:
        def call(self, *a, **k):
            raise AssertionError("nothing may be sent")

    with pytest.raises(errors.InvalidArgument, match="no Dockerfile"):
        build.run_build(NoCalls(), [str(tmp_path)], [("t", "a")], False)
    with pytest.raises(errors.InvalidArgument, match="no @id"):
        build.run_build(NoCalls(), [str(tmp_path)], [("t", "a@1234")], False)


def test_copy_out_of_the_context_refused_before_any_upload(tmp_path):
    class NoCalls:
        def call(self, *a, **k):
            raise AssertionError("nothing may be sent")

    (tmp_path / "Dockerfile").write_text("FROM busybox\nRUN true\nCOPY ../../etc/shadow /x\n")
    with pytest.raises(errors.InvalidImage, match="line 3: COPY ../../etc/shadow: the source leaves"):
        build.run_build(NoCalls(), [str(tmp_path)], [("t", "a")], False)
    (tmp_path / "Dockerfile").write_text("FROM busybox\nHEALTHCHECK CMD true\n")
    with pytest.raises(errors.InvalidArgument, match="line 2: HEALTHCHECK"):
        build.run_build(NoCalls(), [str(tmp_path)], [("t", "a")], False)

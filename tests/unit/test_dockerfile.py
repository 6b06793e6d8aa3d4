"""Dockerfile parsing and build contexts (images/dockerfile.py): what is
supported becomes steps with their line numbers, everything else is refused
naming its line; contexts refuse symlinks out of them and honour
.dockerignore and their size cap."""
from __future__ import annotations

import os
import tarfile

import pytest

from dcctl import buildctx, errors
from images import dockerfile
from images.errors import InvalidImage


def test_supported_instructions_become_steps_with_lines():
    plan = dockerfile.parse(
        "# a comment\n"
        "ARG BASE=busybox\n"
        "FROM $BASE AS build\n"
        "ARG V=2\n"
        "ENV A=$V B=\"x y\"\n"
        "ENV LEGACY some value\n"
        "RUN echo $A \\\n    && true\n"
        "RUN [\"/bin/echo\", \"exec\"]\n"
        "COPY --chown=5:6 a b /d/\n"
        "ADD [\"c d\", \"/e\"]\n"
        "WORKDIR /w\n"
        "EXPOSE 80 53/udp\n"
        "CMD [\"httpd\", \"-f\"]\n"
        "ENTRYPOINT /bin/run\n"
        "LABEL x=y\n"
        "VOLUME [\"/data\"]\n"
        "USER 1000:1000\n", {"V": "3"})
    assert plan.base == "busybox"
    got = [(s.instruction, s.args, s.line) for s in plan.steps]
    assert got == [
        ("ARG", {"V": "3"}, 4),
        ("ENV", {"A": "3", "B": "x y"}, 5),
        ("ENV", {"LEGACY": "some value"}, 6),
        ("RUN", ["/bin/sh", "-c", "echo $A     && true"], 7),
        ("RUN", ["/bin/echo", "exec"], 9),
        ("COPY", {"srcs": ["a", "b"], "dest": "/d/", "chown": (5, 6)}, 10),
        ("ADD", {"srcs": ["c d"], "dest": "/e", "chown": None}, 11),
        ("WORKDIR", "/w", 12),
        ("EXPOSE", [{"proto": "tcp", "port": 80}, {"proto": "udp", "port": 53}], 13),
        ("CMD", ["httpd", "-f"], 14),
        ("ENTRYPOINT", ["/bin/sh", "-c", "/bin/run"], 15),
        ("LABEL", {"x": "y"}, 16),
        ("VOLUME", ["/data"], 17),
        ("USER", "1000:1000", 18),
    ]


@pytest.mark.parametrize("text,line,words", [
    ("FROM a\nHEALTHCHECK CMD true\n", 2, "HEALTHCHECK is not supported"),
    ("FROM a\nONBUILD RUN x\n", 2, "ONBUILD is not supported"),
    ("FROM a\nSHELL [\"/bin/bash\"]\n", 2, "SHELL is not supported"),
    ("FROM a\n\nSTOPSIGNAL SIGTERM\n", 3, "STOPSIGNAL is not supported"),
    ("RUN true\n", 1, "before FROM"),
    ("FROM a\nFROM b\n", 2, "multi-stage"),
    ("FROM --platform=linux/arm64 a\n", 1, "--platform"),
    ("FROM a\nADD http://example.invalid/x /y\n", 2, "no URLs"),
    ("FROM a\nCOPY --from=build /x /y\n", 2, "--from"),
    ("FROM a\nCOPY --chown=www:www x /y\n", 2, "numeric"),
    ("FROM a\nCOPY onlyone\n", 2, "a destination"),
    ("FROM a\nRUN --mount=type=cache,target=/x true\n", 2, "--mount"),
    ("FROM a\nRUN\n", 2, "needs an argument"),
    ("FROM a\nEXPOSE http\n", 2, "EXPOSE http"),
    ("FROM a\nEXPOSE 70000\n", 2, "EXPOSE 70000"),
    ("FROM a\nENV 1BAD=x\n", 2, "not a variable name"),
    ("FROM a\nVOLUME data\n", 2, "absolute"),
    ("FROM a\nUSER a b\n", 2, "USER"),
    ("FROM a\nCMD [\"a\", 1]\n", 2, "list of strings"),
])
def test_unsupported_or_malformed_refused_with_line(text, line, words):
    with pytest.raises(InvalidImage) as exc:
        dockerfile.parse(text)
    assert f"line {line}:" in str(exc.value) and words in str(exc.value)
    assert isinstance(exc.value, ValueError)


def test_no_from_and_undeclared_build_arg_refused():
    with pytest.raises(InvalidImage, match="no FROM"):
        dockerfile.parse("# nothing\n")
    with pytest.raises(InvalidImage, match="NOPE"):
        dockerfile.parse("FROM a\n", {"NOPE": "1"})


def test_context_refuses_symlinks_out_and_honours_dockerignore_and_cap(tmp_path):
    ctx = tmp_path / "ctx"
    (ctx / "src").mkdir(parents=True)
    (ctx / "Dockerfile").write_text("FROM a\n")
    (ctx / "src" / "app.py").write_text("print(1)\n")
    (ctx / "src" / "cache.pyc").write_bytes(b"x" * 10)
    (ctx / "logs").mkdir()
    (ctx / "logs" / "big.log").write_bytes(b"y" * 5000)
    (ctx / "logs" / "keep.log").write_text("k")
    os.symlink("app.py", ctx / "src" / "inside")
    (ctx / ".dockerignore").write_text("# comment\n*/*.pyc\nlogs\n!logs/keep.log\nDockerfile\n")
    files = dockerfile.context_files(str(ctx))
    assert "src/app.py" in files and "src/inside" in files and "Dockerfile" in files
    assert "src/cache.pyc" not in files and "logs/big.log" not in files
    with pytest.raises(errors.InvalidImage, match="cap"):
        dockerfile.context_files(str(ctx), max_bytes=20)
    packed = tmp_path / "ctx.tar"
    assert buildctx.pack_context(str(ctx), str(packed)) == len(files)
    with tarfile.open(packed) as tar:
        assert sorted(tar.getnames()) == sorted(files)
    os.symlink("../../outside", ctx / "src" / "escape")
    with pytest.raises(errors.InvalidImage, match="out of the context"):
        dockerfile.context_files(str(ctx))
    os.unlink(ctx / "src" / "escape")
    os.symlink("/etc/passwd", ctx / "abs")
    with pytest.raises(errors.InvalidImage, match="out of the context"):
        dockerfile.context_files(str(ctx))


def test_build_failed_is_a_wire_error():
    assert errors.BY_NAME["BuildFailed"] is errors.BuildFailed
    assert issubclass(errors.BuildFailed, errors.DcError)


@pytest.mark.parametrize("src", ["../../etc/shadow", "/../etc/shadow", "a/../../x", "..", "../*"])
def test_copy_source_leaving_the_context_refused_at_parse(src):
    for ins in ("COPY", "ADD"):
        with pytest.raises(InvalidImage) as exc:
            dockerfile.parse(f"FROM a\n\n{ins} {src} /x\n")
        assert "line 3:" in str(exc.value) and "leaves the build context" in str(exc.value)
    plan = dockerfile.parse("FROM a\nCOPY /abs a/../b ./c /x/\n")  # inside: kept
    assert plan.steps[0].args["srcs"] == ["/abs", "a/../b", "./c"]


def test_step_text_is_dockerfile_text_without_build_arg_values():
    plan = dockerfile.parse("FROM a\nARG TOKEN\nARG WHO=world\nENV T=$TOKEN\nCOPY index.html /www/index.html\n"
                            "RUN echo $TOKEN \\\n  && true\nEXPOSE 80/udp\n", {"TOKEN": "s3cr3t-value"})
    assert [s.text for s in plan.steps] == [
        "ARG TOKEN", "ARG WHO", "ENV T=$TOKEN", "COPY index.html /www/index.html",
        "RUN echo $TOKEN   && true", "EXPOSE 80/udp"]
    assert plan.steps[2].args == {"T": "s3cr3t-value"}  # the value is used, only never shown

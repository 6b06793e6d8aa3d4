"""Dockerfile builds on a real agent and real LXC (agents/build.py): the
result's container sees exactly the expected tree (a whiteout, an opaque
directory, modes, owners, links), output streams as it comes, and a bad
Dockerfile, a failed RUN, a hung RUN and a missing base each give their
typed error and leave no build container, no layer and no image."""
from __future__ import annotations

import os
import subprocess
import tarfile

import pytest

from dcctl import errors
from tests.waiting import wait_for

pytestmark = pytest.mark.lxc

BASE = """FROM busybox
RUN mkdir -p /srv/repl /srv/keep && echo old > /srv/repl/old && echo gone > /srv/gone \\
    && echo before > /srv/chg && echo kept > /srv/keep/k && chmod 0600 /srv/keep/k
"""
CHILD = """FROM bldbase
ARG WHO=world
ENV GREETING="hello $WHO"
RUN rm /srv/gone && rm -rf /srv/repl && mkdir /srv/repl && echo new > /srv/repl/new \\
    && echo after > /srv/chg && chown 12:34 /srv/chg && chmod 4751 /srv/chg \\
    && echo add > /srv/add && ln -s add /srv/link && ln /srv/add /srv/hard && echo "$GREETING" > /srv/greet
COPY --chown=7:8 app/ /opt/app/
WORKDIR /opt/app
RUN pwd > /srv/wd
EXPOSE 8080
LABEL role=test
VOLUME /data
CMD ["httpd", "-f", "-p", "8080"]
"""
#: (path, type, mode, uid, gid) as `stat` in the container prints them
EXPECTED = {
    "/srv": ("directory", "755", "0", "0"),
    "/srv/add": ("regular file", "644", "0", "0"),
    "/srv/chg": ("regular file", "4751", "12", "34"),
    "/srv/greet": ("regular file", "644", "0", "0"),
    "/srv/hard": ("regular file", "644", "0", "0"),
    "/srv/keep": ("directory", "755", "0", "0"),
    "/srv/keep/k": ("regular file", "600", "0", "0"),
    "/srv/link": ("symbolic link", "777", "0", "0"),
    "/srv/repl": ("directory", "755", "0", "0"),
    "/srv/repl/new": ("regular file", "644", "0", "0"),
    "/srv/wd": ("regular file", "644", "0", "0"),
}


def build(agent, ctx: str, name: str, options=None) -> tuple[list[str], dict]:
    lines, result = [], None
    with agent.client(timeout_s=300) as c:
        for item in c.call("image_build_dockerfile", ctx, name, options or {}):
            if "log" in item:
                lines.append(item["log"])
            else:
                result = item["result"]
    return lines, result


def context(tmp_path, text: str, files: dict | None = None) -> str:
    ctx = tmp_path / f"ctx{len(os.listdir(tmp_path))}"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(text)
    for rel, content in (files or {}).items():
        (ctx / rel).parent.mkdir(parents=True, exist_ok=True)
        (ctx / rel).write_text(content)
    return str(ctx)


def leftovers(agent) -> dict:
    images = os.path.join(agent.state_dir, "images")
    return {"builds": sorted(os.listdir(os.path.join(agent.state_dir, "builds"))),
            "layers": sorted(e for e in os.listdir(os.path.join(images, "layers")) if e.endswith(".tar")),
            "tmp": sorted(os.listdir(os.path.join(images, "tmp"))),
            "images": sorted(i["id"] for i in agent.call("image_ls"))}


@pytest.fixture
def clean(shared_agent):
    made: list[str] = []
    yield made
    for name in made:
        try:
            shared_agent.call("container_destroy", name, True)
        except errors.NoSuchContainer:
            pass
    for image in sorted(shared_agent.call("image_ls"), key=lambda i: -len(i["layers"])):
        if image["name"].startswith("bld"):
            shared_agent.call("image_rm", f"{image['name']}@{image['id']}")


def test_build_tree_whiteout_opaque_modes_owners(shared_agent, tmp_path, clean):
    a = shared_agent
    lines, base = build(a, context(tmp_path, BASE), "bldbase")
    lines, res = build(a, context(tmp_path, CHILD, {"app/run.sh": "#!/bin/sh\necho run\n", "app/lib/x": "x"}),
                       "bldchild", {"tag": "v1", "build_args": {"WHO": "fleet"}})
    assert lines[0] == "Step 1/10 : ARG WHO" and "Step 10/10 : CMD [\"httpd\", \"-f\", \"-p\", \"8080\"]" in lines
    assert "Step 4/10 : COPY --chown=7:8 app/ /opt/app/" in lines and lines[-1].startswith("built bldchild:v1@")
    assert res["image"] == f"bldchild@{res['id'][:12]}" and res["tag"] == "v1" and res["base"] == base["id"]
    manifests = {i["name"]: i for i in a.call("image_ls")}
    assert manifests["bldchild"]["layers"] == [*manifests["bldbase"]["layers"], res["layer"]]
    # a system image's init starts its command in /: the WORKDIR is kept by a wrapper
    assert manifests["bldchild"]["command"] == ["/bin/sh", "-c", 'cd "$1" && shift && exec "$@"', "sh", "/opt/app",
                                                "httpd", "-f", "-p", "8080"]
    assert {"proto": "tcp", "port": 8080} in manifests["bldchild"]["exposed_ports"]
    full = a.call("image_manifest", "bldchild:v1")["manifest"]
    assert full["env"]["GREETING"] == "hello fleet"
    assert full["config"]["labels"] == {"role": "test"} and full["config"]["volumes"] == ["/data"]
    assert full["config"]["working_dir"] == "/opt/app"
    # the layer itself: the deletion and the replaced directory in the store's (OCI) notation
    layer = os.path.join(a.state_dir, "images", "layers", res["layer"] + ".tar")
    assert os.path.getsize(layer) == res["layer_bytes"]
    with tarfile.open(layer) as tar:
        names = set(tar.getnames())
    assert {"srv/.wh.gone", "srv/repl/.wh..wh..opq", "opt/app/run.sh", "opt/app/lib/x"} <= names
    assert not any(n.startswith(("etc/dcfleet", "proc/", "sys/", "dev/")) for n in names), names
    # a container of the result sees exactly the expected tree
    clean.append("bldc1")
    a.call("container_create", "bldchild:v1", "bldc1", {})
    a.call("container_start", "bldc1")
    script = "find /srv | sort | while read p; do stat -c '%n|%F|%a|%u|%g' \"$p\"; done"
    out = wait_for(lambda: (lambda r: r["exit_code"] == 0 and r["stdout"])(
        a.call("container_exec", "bldc1", ["sh", "-c", script])), 60, "exec in the built image",
        ignore=(errors.ContainerNotRunning,))
    seen = {}
    for row in out.decode().splitlines():
        path, kind, mode, uid, gid = row.split("|")
        seen[path] = (kind, mode, uid, gid)
    assert seen == EXPECTED
    cat = a.call("container_exec", "bldc1", ["sh", "-c", "cat /srv/repl/new /srv/chg /srv/greet /srv/wd; "
                                             "readlink /srv/link; stat -c '%i' /srv/add /srv/hard; "
                                             "stat -c '%a %u %g' /opt/app/run.sh /opt/app/lib/x"])
    text = cat["stdout"].decode().splitlines()
    assert text[:5] == ["new", "after", "hello fleet", "/opt/app", "add"]
    assert text[5] == text[6]  # one inode: the hard link kept
    assert text[7:] == ["644 7 8", "644 7 8"]
    assert leftovers(a)["builds"] == []


def test_workdir_and_user_apply_at_run_time(shared_agent, tmp_path, clean):
    a = shared_agent
    ctx = context(tmp_path, "FROM busybox\nRUN echo svc:x:4321:4321::/srv/w:/bin/sh >> /etc/passwd && echo svc:x:4321: >> /etc/group "
                  "&& mkdir -p /srv/w && chown svc /srv/w\n"
                  "WORKDIR /srv/w\nUSER svc\nRUN id -u > mine && pwd >> mine\n"
                  "CMD [\"sh\", \"-c\", \"id -u > out; pwd >> out; cat mine >> out\"]\n")
    _lines, res = build(a, ctx, "bldrt")
    clean.append("bldrt1")
    a.call("container_create", f"bldrt@{res['id']}", "bldrt1", {})
    a.call("container_start", "bldrt1")
    text = wait_for(lambda: (lambda r: r["exit_code"] == 0 and r["stdout"])(
        a.call("container_exec", "bldrt1", ["cat", "/srv/w/out"])), 60, "the command's output",
        ignore=(errors.ContainerNotRunning,))
    assert text.decode().split() == ["4321", "/srv/w", "4321", "/srv/w"]


def test_output_streams_before_the_run_ends(shared_agent, tmp_path, clean):
    ctx = context(tmp_path, "FROM busybox\nRUN echo first; while [ ! -e /tmp/go ]; do sleep 0.1; done; echo second\n")
    with shared_agent.client(timeout_s=120) as c:
        it = iter(c.call("image_build_dockerfile", ctx, "bldstream", {"timeout_s": 60}))
        assert next(it)["log"].startswith("Step 1/1 : RUN")
        assert next(it) == {"log": "first"}  # while the RUN still waits
        builds = os.path.join(shared_agent.state_dir, "builds")
        (name,) = os.listdir(builds)
        subprocess.run(["lxc-attach", "-P", builds, "-n", name, "--", "touch", "/tmp/go"], check=True, timeout=30)
        rest = list(it)
    assert rest[0] == {"log": "second"} and "result" in rest[-1]


@pytest.mark.parametrize("text,options,error,words", [
    ("FROM busybox\nHEALTHCHECK CMD true\n", {}, errors.InvalidImage, "line 2: HEALTHCHECK"),
    ("FROM busybox\nRUN echo partial > /x; echo 'it broke' >&2; exit 3\n", {}, errors.BuildFailed,
     "exit code 3"),
    ("FROM busybox\nRUN echo waiting; sleep 600\n", {"timeout_s": 3}, errors.BuildFailed, "timeout of 3 s"),
    ("FROM bldnosuchbase\nRUN true\n", {}, errors.ImageNotFound, "bldnosuchbase"),
    ("FROM busybox\nCOPY missing /x\n", {}, errors.BuildFailed, "not in the build context"),
])
def test_bad_builds_typed_and_leave_nothing(shared_agent, tmp_path, clean, text, options, error, words):
    before = leftovers(shared_agent)
    with pytest.raises(error) as exc:
        build(shared_agent, context(tmp_path, text), "bldbad", options)
    assert words in str(exc.value)
    if error is errors.BuildFailed and "exit code" in words:
        assert "it broke" in str(exc.value)  # the log's tail
    if "timeout" in words:
        assert "waiting" in str(exc.value)
    assert leftovers(shared_agent) == before


def test_build_arg_values_never_in_the_log(shared_agent, tmp_path, clean):
    """A --build-arg value is used but never written to the build log: its
    ARG step shows the name, a RUN that prints it shows ***; the step lines
    are Dockerfile text; a tagged build's last line names NAME:TAG@id."""
    ctx = context(tmp_path, "FROM busybox\nARG TOKEN\nRUN echo token=$TOKEN; test ${#TOKEN} = 12\n"
                  "COPY index.html /www/index.html\n", {"index.html": "hi\n"})
    lines, res = build(shared_agent, ctx, "bldsec", {"build_args": {"TOKEN": "s3cr3t-value"}, "tag": "v2"})
    assert lines[:4] == ["Step 1/3 : ARG TOKEN", "Step 2/3 : RUN echo token=$TOKEN; test ${#TOKEN} = 12",
                         "token=***", "Step 3/3 : COPY index.html /www/index.html"], lines
    assert not [ln for ln in lines if "s3cr3t" in ln], lines
    assert lines[-1].startswith(f"built bldsec:v2@{res['id'][:12]} ")


def test_device_node_in_the_layer_refused_naming_the_image_path(shared_agent, tmp_path, clean):
    before = leftovers(shared_agent)
    ctx = context(tmp_path, "FROM busybox\nRUN mknod /blk c 1 3\n")
    with pytest.raises(errors.InvalidImage) as exc:
        build(shared_agent, ctx, "bldnode")
    assert "/blk" in str(exc.value) and shared_agent.state_dir not in str(exc.value), str(exc.value)
    assert "builds/" not in str(exc.value)
    assert leftovers(shared_agent) == before


def test_add_unpacks_a_local_archive_and_copies_other_files(shared_agent, tmp_path, clean):
    import io as _io
    ctx = context(tmp_path, "FROM busybox\nADD app.tar.gz plain.txt /opt/add/\n"
                  "RUN cat /opt/add/app/bin/run /opt/add/plain.txt && stat -c '%a %u %g' /opt/add/app/bin/run "
                  "&& test ! -e /opt/add/app.tar.gz\n", {"plain.txt": "plain\n"})
    with tarfile.open(os.path.join(ctx, "app.tar.gz"), "w:gz") as tar:
        data = b"#!/bin/sh\necho run\n"
        info = tarfile.TarInfo("app/bin/run")
        info.size, info.mode, info.uid, info.gid = len(data), 0o750, 33, 44
        tar.addfile(info, _io.BytesIO(data))
    lines, res = build(shared_agent, ctx, "bldadd")
    assert [ln for ln in lines if not ln.startswith(("Step", "built"))] == ["#!/bin/sh", "echo run", "plain",
                                                                             "750 33 44"]
    assert res["name"] == "bldadd"
    bad = context(tmp_path, "FROM busybox\nADD evil.tar /x/\n")
    with tarfile.open(os.path.join(bad, "evil.tar"), "w") as tar:
        info = tarfile.TarInfo("../../etc/evil")
        tar.addfile(info, _io.BytesIO(b""))
    before = leftovers(shared_agent)
    with pytest.raises(errors.InvalidImage, match="outside the archive"):
        build(shared_agent, bad, "bldbad")
    assert leftovers(shared_agent) == before


def test_dir_context_honours_dockerignore(shared_agent, tmp_path, clean):
    ctx = context(tmp_path, "FROM busybox\nCOPY . /ctx/\nRUN test -e /ctx/keep && test ! -e /ctx/drop.log\n",
                  {"keep": "k", "drop.log": "d", ".dockerignore": "*.log\n"})
    _lines, res = build(shared_agent, ctx, "bldignore")
    assert res["name"] == "bldignore"


def test_context_with_symlink_out_refused(shared_agent, tmp_path, clean):
    ctx = context(tmp_path, "FROM busybox\nCOPY . /x\n")
    os.symlink("/etc/shadow", os.path.join(ctx, "leak"))
    before = leftovers(shared_agent)
    with pytest.raises(errors.InvalidImage, match="out of the context"):
        build(shared_agent, ctx, "bldbad")
    assert leftovers(shared_agent) == before


def test_caller_that_goes_away_stops_the_build(shared_agent, tmp_path, clean):
    before = leftovers(shared_agent)
    ctx = context(tmp_path, "FROM busybox\nRUN echo started; sleep 600\nRUN echo never\n")
    with shared_agent.client(timeout_s=120) as c:
        it = c.call("image_build_dockerfile", ctx, "bldgone", {})
        assert next(it)["log"].startswith("Step 1/2")
        assert next(it) == {"log": "started"}
        assert len(os.listdir(os.path.join(shared_agent.state_dir, "builds"))) == 1
        it.close()
    wait_for(lambda: leftovers(shared_agent) == before, 60, "the abandoned build cleaned up")


def test_ops_cleanup_removes_a_stray_build_container_only(shared_agent, tmp_path, clean):
    builds = os.path.join(shared_agent.state_dir, "builds")
    os.makedirs(os.path.join(builds, "bld-stray000000", "upper"))
    ctx = context(tmp_path, "FROM busybox\nRUN echo started; while [ ! -e /tmp/go ]; do sleep 0.1; done\n")
    with shared_agent.client(timeout_s=120) as c:
        it = c.call("image_build_dockerfile", ctx, "bldrunning", {"timeout_s": 60})
        next(it), next(it)  # the RUN runs
        running = [n for n in os.listdir(builds) if n != "bld-stray000000"]
        assert c.call("ops_cleanup")["builds_removed"] == ["bld-stray000000"]
        assert os.listdir(builds) == running  # the running build is left alone
        subprocess.run(["lxc-attach", "-P", builds, "-n", running[0], "--", "touch", "/tmp/go"], check=True, timeout=30)
        assert "result" in list(it)[-1]
    assert os.listdir(builds) == []


def test_build_container_left_by_a_dead_agent_is_removed_at_start(agent_factory, tmp_path):
    a = agent_factory()
    ctx = context(tmp_path, "FROM busybox\nRUN echo started; sleep 600\n")
    with a.client(timeout_s=120) as c:
        it = iter(c.call("image_build_dockerfile", ctx, "bldkilled", {}))
        next(it), next(it)  # the RUN runs
        a.kill9()
    builds = os.path.join(a.state_dir, "builds")
    assert len(os.listdir(builds)) == 1
    a.start()
    assert os.listdir(builds) == []
    assert not [i for i in a.call("image_ls") if i["name"] == "bldkilled"]

"""Running application images (OCI / docker-save imports): a small init and
the dcfleet layer on top of the image's own layers.

An application image has no init of its own: its Entrypoint+Cmd is the
container's whole life.  dcfleet runs it the way ``docker run --init`` does:

* ``/.dcfleet/init`` (INIT_PATH, the manifest's ``init``) is a tiny static C
  program built once per host (``build_init``) and copied into each
  container's own upper dir at create (``install``), beside the host's
  static busybox as ``/.dcfleet/busybox``.  Neither is in any layer, so the
  image id never depends on the host's compiler or busybox.  As PID 1 it
  starts ``/.dcfleet/busybox sh /etc/dcfleet/run``, forwards every signal
  to that child (the container's halt signal included), reaps every
  zombie, and when the child ends writes ``/etc/dcfleet/exit`` ("STATUS
  OOM_KILLS", as images.rootfs's run script does), sends SIGTERM then
  SIGKILL to what is left, and exits with the child's status (128+N for a
  signal), which ends the container.
* ``/etc/dcfleet/run`` (APP_RUN_SCRIPT, in the dcfleet layer) reads the
  env and command files the agent writes at create (images.rootfs), then
  the image's WorkingDir and User from ``/etc/dcfleet/image``, enters the
  working dir and execs ``/.dcfleet/init --exec UID:GID -- ARGV...``, which
  drops to that user and execs the command with the container's PATH (the
  image's binaries, never busybox's applets).

The dcfleet layer (``build_app_layer``) is deterministic (owner 0, mtime 0,
fixed text; directories the image already has keep the image's mode, owner
and mtime), so the same image imported anywhere gets the same id.  It
holds /etc/dcfleet/{run,command,env,image}, the templates /etc/hostname,
/etc/hosts and /etc/resolv.conf, and empty /proc, /sys, /dev and /.dcfleet.
"""
from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import stat
from typing import Any, Mapping

from images.errors import ImageError, InvalidImage, StoreError
from images.fsutil import O_DIR_NOFOLLOW, open_dir_beneath, split_path
from images.proc import blocking_run
from images.rootfs import COMMAND_PATH, ENV_PATH, NETWORK_TEMPLATES, RUN_PATH, command_file_text, env_file_text

__all__ = ["INIT_PATH", "BUSYBOX_PATH", "IMAGE_PATH", "APP_TEMPLATES", "APP_RUN_SCRIPT", "INIT_SOURCE",
           "build_init", "install", "build_app_layer", "resolve_user", "read_image_file"]

INIT_PATH = "/.dcfleet/init"
BUSYBOX_PATH = "/.dcfleet/busybox"
IMAGE_PATH = "/etc/dcfleet/image"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
MAX_PASSWD_BYTES = 4 * 1024**2
BUILD_TIMEOUT_SECONDS = 120.0

#: The network identity every application container gets (as Docker writes
#: /etc/hostname, /etc/hosts and /etc/resolv.conf).
APP_TEMPLATES = {
    "/etc/hostname": NETWORK_TEMPLATES["/etc/hostname"],
    "/etc/hosts": NETWORK_TEMPLATES["/etc/hosts"],
    "/etc/resolv.conf": "# dcfleet: {{ hostname }} has no resolver configured\n",
}

APP_RUN_SCRIPT = """\
#!/.dcfleet/busybox sh
# dcfleet: the command of an application image (Entrypoint+Cmd), started by
# /.dcfleet/init as PID 1.  /etc/dcfleet/image: DCF_WORKDIR, DCF_USER (uid:gid);
# /etc/dcfleet/env: "export KEY='value'" lines; /etc/dcfleet/command: one
# shell-quoted command line.
# the agent's log writer (agents.logger) reads these FIFOs: stdout, stderr
if [ -p /dev/dcfleet.stdout ] && [ -p /dev/dcfleet.stderr ]; then
    exec >/dev/dcfleet.stdout 2>/dev/dcfleet.stderr
fi
. /etc/dcfleet/image
if [ -r /etc/dcfleet/env ]; then
    . /etc/dcfleet/env
fi
: "${PATH:=%s}"
export PATH
cmd=$(/.dcfleet/busybox cat /etc/dcfleet/command 2>/dev/null)
if [ -z "$cmd" ]; then
    echo "dcfleet: this image has no command (Entrypoint/Cmd); give one with --command" >&2
    exit 0
fi
eval "set -- $cmd"
if [ -n "$DCF_WORKDIR" ]; then
    /.dcfleet/busybox mkdir -p "$DCF_WORKDIR" 2>/dev/null
    cd "$DCF_WORKDIR" || exit 126
fi
exec /.dcfleet/init --exec "$DCF_USER" -- "$@"
""" % DEFAULT_PATH

INIT_SOURCE = r"""
/* dcfleet-init: PID 1 of an application container (see images/appinit.py). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static void noop(int sig) { (void)sig; }

static int exec_as(char *spec, char **argv) {
    if (spec[0]) {
        char *colon = strchr(spec, ':');
        char *end;
        unsigned long uid = strtoul(spec, &end, 10), gid = 0;
        if (end == spec || (*end && *end != ':')) { fprintf(stderr, "dcfleet-init: bad user %s\n", spec); return 126; }
        if (colon) gid = strtoul(colon + 1, NULL, 10);
        gid_t g = (gid_t)gid;
        if (setgroups(1, &g) || setgid(g) || setuid((uid_t)uid)) {
            fprintf(stderr, "dcfleet-init: cannot become %s: %s\n", spec, strerror(errno));
            return 126;
        }
    }
    execvp(argv[0], argv);
    fprintf(stderr, "dcfleet-init: %s: %s\n", argv[0], strerror(errno));
    return errno == ENOENT ? 127 : 126;
}

static long oom_kills(void) {
    const char *files[] = {"/sys/fs/cgroup/memory.events", "/sys/fs/cgroup/memory/memory.oom_control"};
    char line[256];
    for (int i = 0; i < 2; i++) {
        FILE *f = fopen(files[i], "r");
        if (!f) continue;
        while (fgets(line, sizeof line, f)) {
            if (strncmp(line, "oom_kill ", 9) == 0) { fclose(f); return atol(line + 9); }
        }
        fclose(f);
    }
    return 0;
}

static void record_exit(int code) {
    char text[64];
    int n = snprintf(text, sizeof text, "%d %ld\n", code, oom_kills());
    int fd = open("/etc/dcfleet/exit.tmp", O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) return;
    if (write(fd, text, n) == n && fsync(fd) == 0) {
        close(fd);
        rename("/etc/dcfleet/exit.tmp", "/etc/dcfleet/exit");
    } else {
        close(fd);
    }
}

static void reap_for(double seconds) {
    struct timespec tick = {0, 50 * 1000 * 1000};
    for (int i = 0; i < (int)(seconds * 20); i++) {
        while (waitpid(-1, NULL, WNOHANG) > 0) {}
        if (errno == ECHILD && waitpid(-1, NULL, WNOHANG) < 0) return;
        nanosleep(&tick, NULL);
    }
}

int main(int argc, char **argv) {
    if (argc >= 5 && strcmp(argv[1], "--exec") == 0 && strcmp(argv[3], "--") == 0)
        return exec_as(argv[2], argv + 4);
    sigset_t all, old;
    sigfillset(&all);
    /* PID 1 of a namespace gets no signal whose action is the default: give
       every catchable signal a handler, then block them all and wait. */
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = noop;
    for (int s = 1; s < NSIG; s++) {
        if (s != SIGKILL && s != SIGSTOP) sigaction(s, &sa, NULL);
    }
    sigprocmask(SIG_BLOCK, &all, &old);
    pid_t child = fork();
    if (child < 0) { perror("dcfleet-init: fork"); return 126; }
    if (child == 0) {
        sigprocmask(SIG_SETMASK, &old, NULL);
        signal(SIGTTOU, SIG_DFL); signal(SIGTTIN, SIG_DFL); signal(SIGTSTP, SIG_DFL);
        for (int s = 1; s < NSIG; s++) { if (s != SIGKILL && s != SIGSTOP) signal(s, SIG_DFL); }
        setsid();
        execl("/.dcfleet/busybox", "busybox", "sh", "/etc/dcfleet/run", (char *)NULL);
        perror("dcfleet-init: /.dcfleet/busybox");
        _exit(127);
    }
    int code = -1;
    while (code < 0) {
        siginfo_t si;
        int sig = sigwaitinfo(&all, &si);
        if (sig < 0) continue;
        if (sig == SIGCHLD) {
            int st;
            pid_t p;
            while ((p = waitpid(-1, &st, WNOHANG)) > 0) {
                if (p == child) code = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
            }
        } else {
            kill(child, sig == SIGPWR ? SIGTERM : sig);
        }
    }
    record_exit(code);
    kill(-1, SIGTERM);
    reap_for(2.0);
    kill(-1, SIGKILL);
    reap_for(1.0);
    sync();
    if (code == 137) sleep(3); /* let the host read the cgroup's oom_kill count */
    return code;
}
"""


def build_init(tools_dir: str, cc: str = "gcc") -> str:
    """The host's dcfleet-init binary, built with ``cc -static`` on first
    use and cached in ``tools_dir`` under the hash of its source.

    Returns:
        the binary's path.

    Raises:
        ImageError: the compiler is missing or failed (message: its output).
        StoreError: tools_dir cannot be written.
    """
    tag = hashlib.sha256(INIT_SOURCE.encode()).hexdigest()[:16]
    out = os.path.join(tools_dir, f"dcfleet-init-{tag}")
    if os.path.isfile(out):
        return out
    try:
        os.makedirs(tools_dir, mode=0o755, exist_ok=True)
        src = os.path.join(tools_dir, f".init-{os.getpid()}.c")
        tmp = os.path.join(tools_dir, f".init-{os.getpid()}.bin")
        with open(src, "w") as f:
            f.write(INIT_SOURCE)
    except OSError as exc:
        raise StoreError(f"cannot write {tools_dir}: {exc.strerror or exc}") from exc
    try:
        try:
            done = blocking_run([cc, "-static", "-Os", "-s", "-o", tmp, src], BUILD_TIMEOUT_SECONDS)
        except ImageError as exc:
            raise ImageError(f"building dcfleet-init with {cc}: {exc}") from exc
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).decode("utf-8", "replace").strip()[-400:]
            raise ImageError(f"building dcfleet-init with {cc} -static failed: {tail} "
                             "(is libc6-dev installed?)")
        os.chmod(tmp, 0o755)
        os.replace(tmp, out)
    finally:
        for path in (src, tmp):
            try:
                os.unlink(path)
            except OSError:
                pass
    return out


def install(upper_dir: str, tools_dir: str, busybox_path: str = "/bin/busybox") -> None:
    """Copy the init and the host's static busybox into a container's upper
    dir as /.dcfleet/init and /.dcfleet/busybox (mode 0755, root).

    Raises:
        ImageError: the init cannot be built.  StoreError: I/O failure.
    """
    init = build_init(tools_dir)
    try:
        target = os.path.join(upper_dir, ".dcfleet")
        os.makedirs(target, mode=0o755, exist_ok=True)
        for src, name in ((init, "init"), (busybox_path, "busybox")):
            dst = os.path.join(target, name)
            if os.path.lexists(dst):
                os.unlink(dst)
            shutil.copyfile(src, dst, follow_symlinks=True)
            os.chmod(dst, 0o755)
    except OSError as exc:
        raise StoreError(f"cannot install the dcfleet init into {upper_dir}: {exc.strerror or exc}") from exc


def read_image_file(store, manifest: Mapping[str, Any], path: str,
                    max_bytes: int = MAX_PASSWD_BYTES) -> bytes | None:
    """A regular file of an image (its layers, topmost first, whiteouts
    honoured), or None if the image has none; never follows a symlink.

    Raises:
        InvalidImage: larger than max_bytes, or a symlink on the way.
    """
    found = store.find_file(manifest, path)
    if found is None or not stat.S_ISREG(found[1].st_mode):
        return None
    parts = split_path(path, what=f"path {path!r}", absolute=True)
    root_fd = os.open(found[0], O_DIR_NOFOLLOW)
    try:
        pfd = open_dir_beneath(root_fd, parts[:-1], what=f"path {path!r}")
    finally:
        os.close(root_fd)
    try:
        fd = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=pfd)
    finally:
        os.close(pfd)
    with os.fdopen(fd, "rb") as f:
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise InvalidImage(f"{path} of the image is over {max_bytes} bytes")
    return data


def _db(data: bytes | None) -> list[list[str]]:
    if not data:
        return []
    return [line.split(":") for line in data.decode("utf-8", "replace").splitlines()
            if line and not line.startswith("#")]


def resolve_user(user: str, passwd: bytes | None, group: bytes | None) -> str:
    """An OCI ``User`` (``name``, ``uid``, ``name:group``, ``uid:gid``...)
    as numeric ``uid:gid`` from the image's /etc/passwd and /etc/group
    ("" for none: root).  A bare numeric uid unknown to passwd gets gid 0,
    as in Docker.

    Raises:
        InvalidImage: a user or group name the image does not define.
    """
    if not user:
        return ""
    name, _sep, grp = user.partition(":")
    users, groups = _db(passwd), _db(group)
    uid = gid = None
    if name.isdigit():
        uid = int(name)
        entry = next((u for u in users if len(u) > 3 and u[2] == name), None)
        gid = int(entry[3]) if entry and entry[3].isdigit() else 0
    else:
        entry = next((u for u in users if len(u) > 3 and u[0] == name), None)
        if entry is None or not entry[2].isdigit() or not entry[3].isdigit():
            raise InvalidImage(f"image user {name!r} is not in the image's /etc/passwd")
        uid, gid = int(entry[2]), int(entry[3])
    if grp:
        if grp.isdigit():
            gid = int(grp)
        else:
            entry = next((g for g in groups if len(g) > 2 and g[0] == grp), None)
            if entry is None or not entry[2].isdigit():
                raise InvalidImage(f"image group {grp!r} is not in the image's /etc/group")
            gid = int(entry[2])
    if uid > 2**32 - 2 or gid > 2**32 - 2:
        raise InvalidImage(f"image user {user!r}: id out of range")
    return f"{uid}:{gid}"


def _write(root: str, path: str, data: str, mode: int) -> None:
    host = os.path.join(root, path.lstrip("/"))
    with open(host, "w", encoding="utf-8") as f:
        f.write(data)
    os.chmod(host, mode)


def build_app_layer(store, lower: Mapping[str, Any], *, command: list[str], env: Mapping[str, str],
                    working_dir: str, user_ids: str) -> str:
    """Add the dcfleet layer (module doc) for an image whose layers are
    ``lower["layers"]`` (already in the store).

    Args:
        store: the ImageStore.
        lower: a provisional manifest {"layers": [...]} of the image's own layers.
        command: the default command (Entrypoint+Cmd).
        env: the default environment.
        working_dir: absolute path or "".
        user_ids: numeric "uid:gid" or "" (resolve_user).

    Returns:
        the layer id (pinned until the store's unpin()).

    Raises:
        InvalidImage: a directory the layer needs is a symlink or not a
            directory in the image.  StoreError: I/O failure.
    """
    dirs = {"/.dcfleet": 0o755, "/dev": 0o755, "/etc": 0o755, "/etc/dcfleet": 0o755,
            "/proc": 0o555, "/sys": 0o555}
    files = {RUN_PATH: (APP_RUN_SCRIPT, 0o755),
             COMMAND_PATH: (command_file_text(command), 0o644),
             ENV_PATH: (env_file_text(env), 0o644),
             IMAGE_PATH: (f"DCF_WORKDIR={shlex.quote(working_dir)}\nDCF_USER={shlex.quote(user_ids)}\n", 0o644),
             **{p: (t, 0o644) for p, t in APP_TEMPLATES.items()}}
    with store.staging("app-layer") as stage:
        root = os.path.join(stage, "rootfs")
        try:
            os.mkdir(root, 0o755)
            for path in sorted(dirs):
                os.mkdir(os.path.join(root, path.lstrip("/")), dirs[path])
            for path, (text, mode) in files.items():
                _write(root, path, text, mode)
            for top, subdirs, names in os.walk(root, topdown=False):
                for name in names + subdirs:
                    os.utime(os.path.join(top, name), (0, 0), follow_symlinks=False)
            for path in sorted(dirs, reverse=True):
                found = store.find_file(lower, path)
                host = os.path.join(root, path.lstrip("/"))
                if found is not None:
                    st = found[1]
                    if not stat.S_ISDIR(st.st_mode):
                        raise InvalidImage(f"the image's {path} is not a directory")
                    os.chown(host, st.st_uid, st.st_gid)
                    os.chmod(host, stat.S_IMODE(st.st_mode))
                    os.utime(host, (st.st_mtime, st.st_mtime))
                else:
                    os.utime(host, (0, 0))
        except OSError as exc:
            raise StoreError(f"building the dcfleet layer in {root}: {exc.strerror or exc}") from exc
        return store.add_layer_from_dir(root, consume=True, pin=True)

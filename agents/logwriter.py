"""The compiled form of the per-container log writer: the same program as
agents/logger.py (same arguments, FIFOs, ``container.log`` records,
rotation, ``logger.pid`` and ``logger.status``), in C, built once per host
with ``gcc -O2`` (as images/appinit.py builds dcfleet's init) and cached
under the hash of its source.  One runs per container, so its size matters:
about 1 MiB of memory against some 11 MiB for a Python process.  When it
cannot be built (no compiler), the agent runs agents/logger.py instead.
"""
from __future__ import annotations

import hashlib
import os
import subprocess

__all__ = ["WRITER_SOURCE", "build_writer", "BUILD_TIMEOUT_SECONDS"]

BUILD_TIMEOUT_SECONDS = 120.0

WRITER_SOURCE = r"""
/* dcfleet-logwriter: a container's log writer (see agents/logger.py, the same program). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#define MAX_RECORD 16384
#define READ_BYTES 65536
#define STATUS_BYTES 1024

static volatile sig_atomic_t stopping = 0;
static void on_signal(int sig) { (void)sig; stopping = 1; }

static char dir[4096], logpath[4200];
static long long max_size = 10 << 20, size = 0;
static int max_files = 3, logfd = -1, statusfd = -1, dirty = 1;
static long long n_records, n_bytes, n_dropped, n_dropped_bytes;
static char last_error[128] = "";

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static long long field(const char *doc, const char *key) {
    char pat[64];
    snprintf(pat, sizeof pat, "\"%s\": ", key);
    const char *p = strstr(doc, pat);
    return p ? atoll(p + strlen(pat)) : 0;
}

static void open_status(void) {
    char path[4200], buf[STATUS_BYTES + 1];
    snprintf(path, sizeof path, "%s/logger.status", dir);
    statusfd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (statusfd < 0) return;
    ssize_t n = pread(statusfd, buf, STATUS_BYTES, 0);
    if (n > 0) {
        buf[n] = 0;
        n_records = field(buf, "records"); n_bytes = field(buf, "bytes");
        n_dropped = field(buf, "dropped_records"); n_dropped_bytes = field(buf, "dropped_bytes");
    }
    posix_fallocate(statusfd, 0, STATUS_BYTES);
}

static void write_status(void) {
    char buf[STATUS_BYTES];
    if (statusfd < 0 || !dirty) return;
    memset(buf, ' ', sizeof buf);
    int n = snprintf(buf, sizeof buf, "{\"pid\": %d, \"records\": %lld, \"bytes\": %lld, \"dropped_records\": %lld, "
                     "\"dropped_bytes\": %lld, \"last_error\": %s%s%s, \"updated_at\": %.3f}", (int)getpid(),
                     n_records, n_bytes, n_dropped, n_dropped_bytes, last_error[0] ? "\"" : "",
                     last_error[0] ? last_error : "null", last_error[0] ? "\"" : "", now_s());
    if (n > 0 && n < STATUS_BYTES) buf[n] = ' ';
    if (pwrite(statusfd, buf, sizeof buf, 0) == (ssize_t)sizeof buf) dirty = 0;
}

static int open_log(void) {
    struct stat st;
    logfd = open(logpath, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
    if (logfd < 0) return -1;
    size = fstat(logfd, &st) == 0 ? st.st_size : 0;
    return 0;
}

static int rotate(void) {
    char src[4300], dst[4300];
    close(logfd);
    logfd = -1;
    if (max_files == 1) {
        if (truncate(logpath, 0) != 0) return -1;
    } else {
        for (int i = max_files - 1; i >= 1; i--) {
            if (i == 1) snprintf(src, sizeof src, "%s", logpath);
            else snprintf(src, sizeof src, "%s.%d", logpath, i - 1);
            snprintf(dst, sizeof dst, "%s.%d", logpath, i);
            if (rename(src, dst) != 0 && errno != ENOENT) return -1;
        }
    }
    return open_log();
}

/* JSON string body of bytes: UTF-8 kept, invalid bytes as U+FFFD, controls escaped. */
static size_t escape(const unsigned char *s, size_t n, char *out) {
    size_t o = 0;
    for (size_t i = 0; i < n;) {
        unsigned char c = s[i];
        if (c == '"' || c == '\\') { out[o++] = '\\'; out[o++] = c; i++; continue; }
        if (c < 0x20) {
            const char *e = c == '\n' ? "\\n" : c == '\r' ? "\\r" : c == '\t' ? "\\t" : c == '\b' ? "\\b"
                          : c == '\f' ? "\\f" : NULL;
            if (e) { memcpy(out + o, e, 2); o += 2; }
            else o += sprintf(out + o, "\\u%04x", c);
            i++;
            continue;
        }
        if (c < 0x80) { out[o++] = c; i++; continue; }
        int len = (c & 0xE0) == 0xC0 ? 2 : (c & 0xF0) == 0xE0 ? 3 : (c & 0xF8) == 0xF0 ? 4 : 0;
        int ok = len > 0 && i + len <= n;
        for (int k = 1; ok && k < len; k++) ok = (s[i + k] & 0xC0) == 0x80;
        if (ok) {
            unsigned cp = len == 2 ? ((c & 0x1F) << 6) | (s[i + 1] & 0x3F)
                        : len == 3 ? ((c & 0x0F) << 12) | ((s[i + 1] & 0x3F) << 6) | (s[i + 2] & 0x3F)
                        : ((c & 0x07) << 18) | ((s[i + 1] & 0x3F) << 12) | ((s[i + 2] & 0x3F) << 6) | (s[i + 3] & 0x3F);
            ok = (len == 2 && cp >= 0x80) || (len == 3 && cp >= 0x800 && (cp < 0xD800 || cp > 0xDFFF))
                 || (len == 4 && cp >= 0x10000 && cp <= 0x10FFFF);
        }
        if (ok) { memcpy(out + o, s + i, len); o += len; i += len; }
        else { memcpy(out + o, "\xEF\xBF\xBD", 3); o += 3; i++; }
    }
    return o;
}

static char line[MAX_RECORD * 6 + 256];

static void record(const char *stream, const unsigned char *text, size_t n, double at) {
    size_t o = sprintf(line, "{\"at\": %.6f, \"stream\": \"%s\", \"text\": \"", at, stream);
    o += escape(text, n, line + o);
    memcpy(line + o, "\"}\n", 3);
    o += 3;
    int err = 0;
    if (logfd < 0 && open_log() != 0) err = errno;
    if (!err && size && size + (long long)o > max_size && rotate() != 0) err = errno;
    if (!err) {
        ssize_t w = write(logfd, line, o);
        if (w == (ssize_t)o) { size += w; n_records++; n_bytes += w; }
        else {
            err = w < 0 ? errno : ENOSPC;
            if (w > 0 && ftruncate(logfd, size) != 0) { /* the file keeps a partial line; readers skip it */ }
        }
    }
    if (err) {
        struct stat st;
        n_dropped++;
        n_dropped_bytes += o;
        snprintf(last_error, sizeof last_error, "%s", strerror(err));
        if (logfd >= 0 && stat(logpath, &st) != 0) { close(logfd); logfd = -1; }
    }
    dirty = 1;
}

static const char *names[2] = {"stdout", "stderr"};
static unsigned char partial[2][MAX_RECORD + READ_BYTES];
static size_t plen[2];

static void take(int s, const unsigned char *data, size_t n, double at) {
    memcpy(partial[s] + plen[s], data, n);
    plen[s] += n;
    size_t start = 0;
    for (size_t i = 0; i < plen[s]; i++) {
        if (partial[s][i] == '\n') { record(names[s], partial[s] + start, i - start, at); start = i + 1; }
        else if (i + 1 - start >= MAX_RECORD) { record(names[s], partial[s] + start, i + 1 - start, at); start = i + 1; }
    }
    memmove(partial[s], partial[s] + start, plen[s] - start);
    plen[s] -= start;
}

int main(int argc, char **argv) {
    int foreground = 0, fds[2];
    unsigned char buf[READ_BYTES];
    if (argc < 2) { fprintf(stderr, "usage: %s DIR [--max-size-bytes N] [--max-files K] [--foreground]\n", argv[0]); return 2; }
    snprintf(dir, sizeof dir, "%s", argv[1]);
    for (int i = 2; i < argc; i++) {
        if (!strcmp(argv[i], "--max-size-bytes") && i + 1 < argc) max_size = atoll(argv[++i]);
        else if (!strcmp(argv[i], "--max-files") && i + 1 < argc) max_files = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--foreground")) foreground = 1;
        else { fprintf(stderr, "logwriter: unknown argument %s\n", argv[i]); return 2; }
    }
    if (max_files < 1) max_files = 1;
    snprintf(logpath, sizeof logpath, "%s/container.log", dir);
    mkdir(dir, 0700);
    for (int s = 0; s < 2; s++) {
        char path[4200];
        snprintf(path, sizeof path, "%s/%s.fifo", dir, names[s]);
        if (mkfifo(path, 0622) != 0 && errno != EEXIST) { fprintf(stderr, "logwriter: %s: %s\n", path, strerror(errno)); return 1; }
        fds[s] = open(path, O_RDWR | O_NONBLOCK | O_CLOEXEC);
        if (fds[s] < 0) { fprintf(stderr, "logwriter: %s: %s\n", path, strerror(errno)); return 1; }
    }
    open_status();
    pid_t child = foreground ? 0 : fork();
    if (child < 0) { perror("logwriter: fork"); return 1; }
    if (child > 0 || foreground) {
        char tmp[4200], path[4200];
        snprintf(tmp, sizeof tmp, "%s/logger.pid.tmp", dir);
        snprintf(path, sizeof path, "%s/logger.pid", dir);
        FILE *f = fopen(tmp, "w");
        if (!f || fprintf(f, "%d\n", child > 0 ? (int)child : (int)getpid()) < 0 || fclose(f) != 0 || rename(tmp, path) != 0) {
            fprintf(stderr, "logwriter: %s: %s\n", path, strerror(errno));
            if (child > 0) { kill(child, SIGKILL); return 1; }
        }
        if (child > 0) _exit(0);
    }
    if (!foreground) {
        setsid();
        if (chdir("/") != 0) { /* the agent's cwd is only not pinned then */ }
        int null = open("/dev/null", O_RDWR);
        if (null >= 0) { dup2(null, 0); dup2(null, 1); dup2(null, 2); if (null > 2) close(null); }
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    write_status();
    struct pollfd pfd[2] = {{fds[0], POLLIN, 0}, {fds[1], POLLIN, 0}};
    double last_status = now_s(), last_dir = last_status;
    while (!stopping) {
        int r = poll(pfd, 2, 1000);
        double at = now_s();
        if (r > 0) {
            for (int s = 0; s < 2; s++) {
                if (!(pfd[s].revents & POLLIN)) continue;
                ssize_t n = read(fds[s], buf, sizeof buf);
                if (n > 0) take(s, buf, n, at);
            }
        }
        if (at - last_status >= 1.0) { write_status(); last_status = at; }
        if (at - last_dir >= 5.0) {
            struct stat st;
            last_dir = at;
            if (stat(dir, &st) != 0) return 0; /* the container was destroyed */
        }
    }
    for (int s = 0; s < 2; s++) {
        ssize_t n;
        while ((n = read(fds[s], buf, sizeof buf)) > 0) take(s, buf, n, now_s());
        if (plen[s]) { record(names[s], partial[s], plen[s], now_s()); plen[s] = 0; }
    }
    write_status();
    return 0;
}
"""


def build_writer(tools_dir: str, cc: str = "gcc") -> str | None:
    """The host's compiled log writer, built on first use and cached in
    ``tools_dir`` under the hash of its source; None when it cannot be
    built (the caller runs agents/logger.py).  Blocking: call it once at
    agent start, from the thread pool or before serving."""
    tag = hashlib.sha256(WRITER_SOURCE.encode()).hexdigest()[:16]
    out = os.path.join(tools_dir, f"dcfleet-logwriter-{tag}")
    if os.path.isfile(out):
        return out
    src = os.path.join(tools_dir, f".logwriter-{os.getpid()}.c")
    tmp = os.path.join(tools_dir, f".logwriter-{os.getpid()}.bin")
    try:
        os.makedirs(tools_dir, mode=0o755, exist_ok=True)
        with open(src, "w") as f:
            f.write(WRITER_SOURCE)
        done = subprocess.run([cc, "-O2", "-Wall", "-o", tmp, src], capture_output=True,
                              timeout=BUILD_TIMEOUT_SECONDS, stdin=subprocess.DEVNULL)
        if done.returncode != 0:
            return None
        os.chmod(tmp, 0o755)
        os.replace(tmp, out)
        return out
    except (OSError, subprocess.TimeoutExpired):
        return None
    finally:
        for path in (src, tmp):
            try:
                os.unlink(path)
            except OSError:
                pass

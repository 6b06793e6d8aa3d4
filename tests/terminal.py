"""An operator's terminal for tests: a pty that runs a command, answers the
shell's cursor-position query as a terminal emulator does, and types each
line only once the shell has shown its prompt (so a loaded machine, where a
prompt comes late, never loses a keystroke)."""
from __future__ import annotations

import os
import pty
import subprocess
import time

from tests.fdkit import readable

#: ``ESC [ 6 n``: busybox's line editor asks where the cursor is and reads the
#: terminal's answer (``ESC [ row ; col R``) from its input before the next line.
CURSOR_QUERY = b"\x1b[6n"
CURSOR_ANSWER = b"\x1b[1;1R"
PROMPT = b"# "


def run_in_pty(argv: list[str], env: dict, keystrokes: list[bytes], timeout_s: float = 60.0,
               settle_s: float = 0.3) -> tuple[int, bytes]:
    """Run ``argv`` on a fresh pty and type ``keystrokes`` one at a time, each
    after one more shell prompt has appeared and output has been quiet for
    ``settle_s`` seconds.  Returns (exit status, everything the screen
    showed).  The process is killed if it has not ended after ``timeout_s``."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=env, start_new_session=True)
    os.close(slave)
    seen = b""
    answered = 0
    typed = 0
    deadline = time.monotonic() + timeout_s
    quiet_since = time.monotonic()
    try:
        while time.monotonic() < deadline:
            if readable(master, 0.1):
                try:
                    data = os.read(master, 65536)
                except OSError:
                    break
                if not data:
                    break
                seen += data
                quiet_since = time.monotonic()
                while seen.count(CURSOR_QUERY) > answered:
                    os.write(master, CURSOR_ANSWER)
                    answered += 1
            elif (typed < len(keystrokes) and seen.count(PROMPT) > typed
                  and time.monotonic() - quiet_since > settle_s):
                os.write(master, keystrokes[typed])
                typed += 1
                quiet_since = time.monotonic()
            if proc.poll() is not None and not ready:
                break
        return proc.wait(timeout=5), seen
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)

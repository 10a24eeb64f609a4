"""Stopping politely (SIGINT/SIGTERM -> checkpoint at a step boundary) and the crash test hook.

Test hook: ``EDGEVISION_KILL_AFTER_STEPS=N`` sends SIGKILL (or the signal named by
``EDGEVISION_KILL_SIGNAL``, e.g. TERM) to the process after N optimizer steps, to test crash
recovery at a known point; with ``EDGEVISION_KILL_GROUP=1`` to its whole process group, as a
terminal's Ctrl-C does (DataLoader workers included).
"""

from __future__ import annotations

import os
import signal
import sys

KILL_ENV = "EDGEVISION_KILL_AFTER_STEPS"
KILL_SIGNAL_ENV = "EDGEVISION_KILL_SIGNAL"  # KILL (default) or TERM/INT
KILL_GROUP_ENV = "EDGEVISION_KILL_GROUP"  # set: signal the whole process group, not just this process


class Stop:
    """SIGINT/SIGTERM -> finish the current step, checkpoint, exit.

    Repeats are ignored on purpose: under torchrun a Ctrl-C reaches each rank twice (from the
    terminal, then forwarded by the launcher), and a scheduler's SIGTERM often does too.
    """

    def __init__(self, verbose: bool = True):
        self.signum = 0
        self._old = {}
        self._pid = os.getpid()
        self.verbose = verbose

    def install(self):
        for s in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[s] = signal.signal(s, self._handle)
            except ValueError:  # not the main thread (e.g. called from a worker thread)
                pass

    def _handle(self, signum, frame):
        if os.getpid() != self._pid or self.signum:  # a forked DataLoader worker, or a repeat
            return
        self.signum = signum
        if self.verbose:
            print(f"\n{signal.Signals(signum).name}: finishing this step, then saving a checkpoint",
                  file=sys.stderr, flush=True)

    def restore(self):
        for s, h in self._old.items():
            signal.signal(s, h)


def kill_after_steps() -> int:
    """The test hook's step count (0: off)."""
    return int(os.environ.get(KILL_ENV, "0") or 0)


def kill_self() -> None:
    """Test hook: a crash (SIGKILL) or a polite stop (SIGTERM) at a known step."""
    sig = getattr(signal, "SIG" + os.environ.get(KILL_SIGNAL_ENV, "KILL"))
    if os.environ.get(KILL_GROUP_ENV):  # as a terminal's Ctrl-C: DataLoader workers get it too
        os.killpg(os.getpgid(0), sig)
    else:
        os.kill(os.getpid(), sig)

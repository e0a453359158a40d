"""CPU steal: the share of a virtual machine's CPU time that its host gave to other guests.

On a cloud VM the vCPUs are threads of the host; when the host is busy, a vCPU that is ready to run waits, and
Linux counts that wait as *steal* (the 8th number of the ``cpu`` line of ``/proc/stat``; ``st`` in ``top`` and
``vmstat``). While it is high, everything on the VM runs slower by about that share, so a time or a rate measured
then says more about the host than about the code. On one 2-vCPU VM steal went from 0 to 57% and back within
minutes, and a training step from 0.27 s to 1.0 s with it (docs/performance.md). The pretraining job and the
benchmarks report it next to their times.

    meter = StealMeter()          # reads /proc/stat now
    ...                           # the work being timed
    meter.share()                 # steal / all CPU time since then, 0..1; None where there is no /proc/stat

Only Linux has ``/proc/stat``; elsewhere (and on bare metal, where it stays 0) there is nothing to report.
"""
from __future__ import annotations

#: steal at or above this share of the CPU time is worth a line of output (below it, timings barely move)
NOTEWORTHY = 0.05


def cpu_jiffies(path: str = "/proc/stat") -> tuple[int, int] | None:
    """(all CPU time, steal) in clock ticks since boot, summed over the CPUs; None if ``path`` is unreadable.

    The ``cpu`` line: user nice system idle iowait irq softirq steal [guest guest_nice]. Guest time is already
    counted in user and nice, so the total is the first eight fields."""
    try:
        with open(path, encoding="ascii") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if len(fields) < 9 or fields[0] != "cpu" or not all(x.isdigit() for x in fields[1:9]):
        return None
    ticks = [int(x) for x in fields[1:9]]
    return sum(ticks), ticks[7]


class StealMeter:
    """Steal over an interval: created at its start, :meth:`share` at its end (may be called again later)."""

    def __init__(self, path: str = "/proc/stat"):
        self.path = path
        self.start = cpu_jiffies(path)

    def share(self) -> float | None:
        """Steal as a share of all CPU time since the meter was created; None without ``/proc/stat`` or when no
        tick has passed."""
        end = cpu_jiffies(self.path)
        if self.start is None or end is None:
            return None
        total, steal = end[0] - self.start[0], end[1] - self.start[1]
        return steal / total if total > 0 else None


def steal_note(share: float | None, what: str) -> str:
    """``"; the VM's host took 41% of the CPU time during <what> (CPU steal), ..."`` when ``share`` is noteworthy,
    else ``""``: a clause to append to a line of output."""
    if share is None or share < NOTEWORTHY:
        return ""
    return f"; the VM's host took {share:.0%} of the CPU time during {what} (CPU steal), so it ran slower than usual"

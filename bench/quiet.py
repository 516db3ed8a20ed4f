"""Is anything else using the CPUs? The benchmark shares its machine with other work (builds,
test suites), and on two cores any of it lands on the server's or the client's core.

`Watch` brackets a measurement: it reads the CPU time of every process from /proc at both
ends, leaving out the benchmark's own (this process, its children, the server's process group)
and kernel threads. A process's time includes what its reaped children used (cutime/cstime),
so a build's short-lived compiler processes are counted through the make or ninja that waits
for them. A measurement with more than FOREIGN_LIMIT of a core of such work is flagged
"disturbed" and repeated; so is one during which the hypervisor stole more than STEAL_LIMIT
(on a virtual machine, /proc/stat's steal column: other guests on the same host).
"""

import os
import time
from pathlib import Path

HZ = os.sysconf("SC_CLK_TCK")
FOREIGN_LIMIT = 0.05  # cores: 5% of one core, averaged over the measurement
STEAL_LIMIT = 0.1  # cores the hypervisor took away (other guests on the same host)


def processes():
    """{pid: (ppid, pgrp, cpu seconds incl. reaped children, name)} for every process."""
    procs = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        f = stat[stat.rindex(")") + 2 :].split()
        # f[1] ppid, f[2] pgrp, f[11..14] utime stime cutime cstime
        procs[int(entry)] = (int(f[1]), int(f[2]), sum(int(x) for x in f[11:15]) / HZ, name)
    return procs


def _foreign(procs, server_pgid):
    me = os.getpid()
    out = {}
    for pid, (ppid, pgrp, cpu, name) in procs.items():
        if pid in (me, 2) or ppid in (me, 2) or pgrp == server_pgid:
            continue  # ours, or a kernel thread
        out[pid] = (cpu, name)
    return out


def _steal():
    """CPU time the hypervisor gave to someone else (all CPUs), from /proc/stat."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    return int(fields[8]) / HZ if len(fields) > 8 else 0.0


def _group_cpu(procs, pgid):
    return sum(cpu for _, pgrp, cpu, _ in procs.values() if pgrp == pgid)


class Watch:
    """Foreign CPU use and hypervisor steal, in cores, over the lifetime of the `with` block;
    and the server's own (its process group's), as `server`."""

    def __init__(self, server_pgid):
        self.pgid = server_pgid
        self.foreign = 0.0
        self.steal = 0.0
        self.server = 0.0
        self.top = []  # [(name, pid, cores)]: who the foreign time came from, largest first

    def __enter__(self):
        self.t0 = time.monotonic()
        self.steal0 = _steal()
        procs = processes()
        self.before = _foreign(procs, self.pgid)
        self.server0 = _group_cpu(procs, self.pgid)
        return self

    def __exit__(self, *exc):
        procs = processes()
        after = _foreign(procs, self.pgid)
        wall = max(time.monotonic() - self.t0, 1e-3)
        self.server = (_group_cpu(procs, self.pgid) - self.server0) / wall
        used = {}
        for pid, (cpu, name) in after.items():
            delta = cpu - self.before.get(pid, (0.0, name))[0]
            if delta > 0:
                used[pid] = (delta, name)
        self.foreign = sum(d for d, _ in used.values()) / wall
        worst = sorted(used.items(), key=lambda kv: -kv[1][0])[:3]
        self.top = [(name, pid, round(d / wall, 3)) for pid, (d, name) in worst]
        self.steal = (_steal() - self.steal0) / wall
        return False

    @property
    def disturbed(self):
        return self.foreign > FOREIGN_LIMIT or self.steal > STEAL_LIMIT


def wait_quiet(max_seconds, limit=FOREIGN_LIMIT):
    """Wait, at most max_seconds, for a second in which other processes use less than `limit`
    of a core. Returns the last reading."""
    deadline = time.monotonic() + max_seconds
    while True:
        with Watch(server_pgid=-1) as w:
            time.sleep(1.0)
        if w.foreign < limit or time.monotonic() >= deadline:
            return w.foreign

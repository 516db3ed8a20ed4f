"""The Autobahn WebSocket test cases against pronghorn, through kosoku (`make autobahn`).

    .venv/bin/python tests/autobahn.py [--cases '1.*' ...] [--out DIR]

Serves tests/apps/ws_app.py (an echo on every path but its special ones) on a free port, runs
kosoku's fuzzing client over sections 1-7, 9, 10 and 12-13 (two cases at a time), prints the
count of each verdict and exits 1 if any case is graded anything but OK, NON-STRICT or
INFORMATIONAL (for the exchange) and OK or INFORMATIONAL (for the close), or the server died.
UNIMPLEMENTED would be a failure too: every section run is one pronghorn implements.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
SECTIONS = ["1.*", "2.*", "3.*", "4.*", "5.*", "6.*", "7.*", "9.*", "10.*", "12.*", "13.*"]
GOOD = {"OK", "NON-STRICT", "INFORMATIONAL"}
GOOD_CLOSE = {"OK", "INFORMATIONAL"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", nargs="*", default=SECTIONS, help="kosoku -i patterns")
    ap.add_argument("--out", default=None, help="report directory (default: a temporary one)")
    args = ap.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="autobahn-"))
    port = free_port()
    log = (
        open(out.parent / f"{out.name}-server.log", "wb") if args.out else tempfile.TemporaryFile()
    )
    server = subprocess.Popen(
        [str(BIN / "pronghorn"), "ws_app:app", "--app-dir", str(REPO / "tests/apps"),
         "--port", str(port), "--no-access-log", "--log-level", "warning",
         "--ws-max-size", str(16 * 1024 * 1024)],
        cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise
                time.sleep(0.05)
        cmd = [str(BIN / "kosoku"), "-p", "2", "-o", str(out)]
        for c in args.cases:
            cmd += ["-i", c]
        t0 = time.monotonic()
        run = subprocess.run([*cmd, f"127.0.0.1:{port}"], capture_output=True, text=True)
        took = time.monotonic() - t0
        alive = server.poll() is None
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
    index = out / "index.json"
    if not index.exists():
        print(run.stdout[-3000:], run.stderr[-3000:])
        print(f"kosoku wrote no {index}")
        return 1
    cases = next(iter(json.loads(index.read_text()).values()))
    counts = collections.Counter(f"{v['behavior']}/{v['behaviorClose']}" for v in cases.values())
    bad = sorted(
        (
            k
            for k, v in cases.items()
            if v["behavior"] not in GOOD or v["behaviorClose"] not in GOOD_CLOSE
        ),
        key=lambda k: [int(x) for x in k.split(".")],
    )
    print(f"autobahn (kosoku): {len(cases)} cases in {took:.0f} s: "
          + ", ".join(f"{n} {verdict}" for verdict, n in sorted(counts.items())))  # fmt: skip
    for k in bad[:40]:
        v = cases[k]
        print(f"  {k}: {v['behavior']}/{v['behaviorClose']}", end="")
        report = out / v.get("reportfile", "")
        if report.is_file():
            print(f" - {json.loads(report.read_text()).get('result', '')}"[:200], end="")
        print()
    if not alive:
        print("the server exited during the run")
    print(f"reports: {out}{os.sep}index.html")
    return 0 if not bad and alive else 1


if __name__ == "__main__":
    sys.exit(main())

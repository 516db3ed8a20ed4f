"""Hold many idle keep-alive connections to a server, for the RSS-per-connection measurement.

usage: idle.py HOST PORT N

Opens N connections in batches (so a listen backlog smaller than N does not turn into SYN
retries), sends one `GET /` on each and reads its answer, then prints one JSON line
{"ok", "failed", "seconds"} and waits. A line on stdin makes it count the connections the
server still keeps open, print {"open", "closed"} and exit, closing them all.
"""

import json
import selectors
import socket
import sys
import time

BATCH = 500
REQUEST = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"
EXPECT = b"Hello, world!"


def open_batch(host, port, count, timeout=15.0):
    sel = selectors.DefaultSelector()
    pending = {}
    done, failed = [], 0
    for _ in range(count):
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex((host, port))
        pending[s] = b""
        sel.register(s, selectors.EVENT_WRITE, "connect")
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        for key, _ in sel.select(timeout=0.5):
            s = key.fileobj
            try:
                if key.data == "connect":
                    err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if err:
                        raise OSError(err, "connect")
                    s.sendall(REQUEST)
                    sel.modify(s, selectors.EVENT_READ, "read")
                    continue
                chunk = s.recv(65536)
                if not chunk:
                    raise OSError("closed before the answer")
                pending[s] += chunk
                if EXPECT in pending[s]:
                    sel.unregister(s)
                    del pending[s]
                    done.append(s)
            except OSError:
                sel.unregister(s)
                del pending[s]
                s.close()
                failed += 1
    for s in pending:
        s.close()
    failed += len(pending)
    sel.close()
    return done, failed


def main():
    host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    start = time.monotonic()
    held, failed = [], 0
    while len(held) + failed < n:
        done, bad = open_batch(host, port, min(BATCH, n - len(held) - failed))
        held += done
        failed += bad
    seconds = time.monotonic() - start
    print(json.dumps({"ok": len(held), "failed": failed, "seconds": round(seconds, 3)}), flush=True)
    sys.stdin.readline()
    still_open = 0
    for s in held:
        try:
            if s.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b"":
                continue  # the server closed it
            still_open += 1  # unexpected bytes, but open
        except BlockingIOError:
            still_open += 1
        except OSError:
            pass
    print(json.dumps({"open": still_open, "closed": len(held) - still_open}), flush=True)
    for s in held:
        s.close()


if __name__ == "__main__":
    main()

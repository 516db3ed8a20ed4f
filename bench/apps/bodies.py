"""Response bodies shared by the ASGI app, the WSGI app and the nginx config."""

HELLO = b"Hello, world!"
# 10 KiB of printable text (no quotes or backslashes, so nginx can `return` it verbatim).
BODY_10K = (b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ" * 200)[:10240]

# Scenario 2c: a 1 MiB file, written by bench/run.py into a temporary directory at start and
# named by this environment variable (which the servers inherit).
FILE_1M_ENV = "BENCH_FILE_1M"
FILE_1M_SIZE = 1 << 20


def file_1m_bytes():
    """The file's content: 1 MiB of the 10 KiB body repeated (fixed, so a run can check it)."""
    return (BODY_10K * (FILE_1M_SIZE // len(BODY_10K) + 1))[:FILE_1M_SIZE]

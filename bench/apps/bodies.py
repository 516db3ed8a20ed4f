"""Response bodies shared by the ASGI app, the WSGI app and the nginx config."""

HELLO = b"Hello, world!"
# 10 KiB of printable text (no quotes or backslashes, so nginx can `return` it verbatim).
BODY_10K = (b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ" * 200)[:10240]

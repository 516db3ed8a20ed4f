"""The benchmark's WSGI app: the same bytes as the ASGI app's ``/`` and ``/10k``.

Routes: ``/10k`` the 10 KB body; ``/sleep100`` the hello body after ``time.sleep(0.1)`` (a
blocking call, as a database query is: scenario 6d, which measures the thread pool); anything
else the hello body.
"""

import time

from bodies import BODY_10K, HELLO

HELLO_HEADERS = [("Content-Type", "text/plain"), ("Content-Length", str(len(HELLO)))]
BIG_HEADERS = [("Content-Type", "text/plain"), ("Content-Length", str(len(BODY_10K)))]


def app(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/10k":
        start_response("200 OK", BIG_HEADERS)
        return [BODY_10K]
    if path == "/sleep100":
        time.sleep(0.1)
    start_response("200 OK", HELLO_HEADERS)
    return [HELLO]

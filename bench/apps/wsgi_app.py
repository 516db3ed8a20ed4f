"""The benchmark's WSGI app: the same bytes as the ASGI app's ``/`` and ``/10k``."""

from bodies import BODY_10K, HELLO

HELLO_HEADERS = [("Content-Type", "text/plain"), ("Content-Length", str(len(HELLO)))]
BIG_HEADERS = [("Content-Type", "text/plain"), ("Content-Length", str(len(BODY_10K)))]


def app(environ, start_response):
    if environ["PATH_INFO"] == "/10k":
        start_response("200 OK", BIG_HEADERS)
        return [BODY_10K]
    start_response("200 OK", HELLO_HEADERS)
    return [HELLO]

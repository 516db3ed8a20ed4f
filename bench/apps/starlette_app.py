"""Scenario 2c's app: a 1 MiB file through Starlette's ``FileResponse``.

Routes:
  GET  /file1m  the file named by $BENCH_FILE_1M (bench/run.py writes it at start, in a
                temporary directory), as ``FileResponse(path)``: a stat per request, then
                ``http.response.pathsend`` when the server advertises that extension, else
                64 KiB ``http.response.body`` chunks read through anyio's worker threads.

The answer carries ``x-bench-pathsend: yes|no`` (whether the scope advertised the extension),
so the results can say which path each server took.

asgi_app.py hands ``/file1m`` to this app, so every ASGI server keeps serving one app (and
answering ``GET /`` with the hello body, which is how the runner knows it is up).
"""

import os

from bodies import FILE_1M_ENV
from starlette.applications import Starlette
from starlette.responses import FileResponse
from starlette.routing import Route


async def file1m(request):
    pathsend = "http.response.pathsend" in request.scope.get("extensions", {})
    return FileResponse(
        os.environ[FILE_1M_ENV], headers={"x-bench-pathsend": "yes" if pathsend else "no"}
    )


app = Starlette(routes=[Route("/file1m", file1m)])

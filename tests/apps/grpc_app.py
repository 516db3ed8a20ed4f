"""A connect-python (connectrpc) ASGI service for tests/test_grpc.py, called there by grpcio.

Its stubs are generated at test time from ``proto/pronghorn_test/v1/echo.proto``; the test puts
the output directory on the server's PYTHONPATH, so this module imports only under that test.
"""

import asyncio

from connectrpc.code import Code
from connectrpc.errors import ConnectError
from pronghorn_test.v1.echo_connect import EchoServiceASGIApplication
from pronghorn_test.v1.echo_pb2 import EchoResponse, OutcomeResponse

#: token -> how a sleeping handler ended, so a test can see that a deadline cancelled it
OUTCOMES: dict[str, str] = {}


def fail_if_asked(request) -> None:
    if request.fail:
        raise ConnectError(Code(request.fail), request.text)


class EchoService:
    async def unary(self, request, ctx):
        # Metadata both ways: a request header comes back as a trailer, which grpcio only
        # reports if the trailing HEADERS frame arrived.
        ctx.response_headers["x-method"] = "unary"
        ctx.response_trailers["x-echo"] = ctx.request_headers.get("x-echo", "")
        if request.sleep:
            OUTCOMES[request.token] = "sleeping"
            try:
                await asyncio.sleep(request.sleep)
            except asyncio.CancelledError:
                OUTCOMES[request.token] = "cancelled"
                raise
            OUTCOMES[request.token] = "finished"
        fail_if_asked(request)
        return EchoResponse(text=request.text)

    async def server_stream(self, request, ctx):
        for i in range(request.count):
            yield EchoResponse(text=f"{request.text} {i}", index=i)
            await asyncio.sleep(request.sleep)  # a deadline can expire between messages
        # After the messages, so the status goes in trailers that follow DATA frames.
        fail_if_asked(request)

    async def client_stream(self, requests, ctx):
        texts = [request.text async for request in requests]
        return EchoResponse(text=" ".join(texts), index=len(texts))

    async def bidi(self, requests, ctx):
        # One reply per message as it comes: the client waits for each before sending the next.
        i = 0
        async for request in requests:
            fail_if_asked(request)
            yield EchoResponse(text=request.text.upper(), index=i)
            i += 1

    async def outcome(self, request, ctx):
        return OutcomeResponse(outcome=OUTCOMES.get(request.token, ""))


app = EchoServiceASGIApplication(EchoService())

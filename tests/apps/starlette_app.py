"""A Starlette app: routes, JSON, form upload, streaming, background task, lifespan state, a
WebSocket echo."""

import asyncio
import contextlib

from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

BACKGROUND: list[str] = []


@contextlib.asynccontextmanager
async def lifespan(app):
    print("STARLETTE-STARTUP", flush=True)
    yield {"greeting": "hello from lifespan"}
    print("STARLETTE-SHUTDOWN", flush=True)


async def home(request: Request):
    return PlainTextResponse("starlette home")


async def item(request: Request):
    item_id = request.path_params["item_id"]
    return JSONResponse({"item_id": item_id, "q": request.query_params.get("q")})


async def echo_json(request: Request):
    data = await request.json()
    return JSONResponse({"received": data, "method": request.method})


async def upload(request: Request):
    async with request.form() as form:
        upload_file = form["file"]
        content = await upload_file.read()
        return JSONResponse(
            {
                "name": form["name"],
                "filename": upload_file.filename,
                "size": len(content),
                "head": content[:16].decode("latin-1"),
            }
        )


async def stream(request: Request):
    async def numbers():
        for i in range(5):
            yield f"line {i}\n".encode()
            await asyncio.sleep(0.01)

    return StreamingResponse(numbers(), media_type="text/plain")


async def record(value: str):
    await asyncio.sleep(0.05)
    BACKGROUND.append(value)


async def background(request: Request):
    value = request.query_params["value"]
    return PlainTextResponse("scheduled", background=BackgroundTask(record, value))


async def background_result(request: Request):
    return JSONResponse({"done": BACKGROUND})


async def state(request: Request):
    return JSONResponse({"greeting": request.state.greeting})


async def client(request: Request):
    return JSONResponse({"client": list(request.client), "url": str(request.url)})


async def ws_echo(websocket: WebSocket):
    await websocket.accept()
    try:
        while True:
            text = await websocket.receive_text()
            await websocket.send_text(f"starlette: {text}")
    except WebSocketDisconnect:
        pass


app = Starlette(
    routes=[
        WebSocketRoute("/ws", ws_echo),
        Route("/", home),
        Route("/items/{item_id:int}", item),
        Route("/json", echo_json, methods=["POST"]),
        Route("/upload", upload, methods=["POST"]),
        Route("/stream", stream),
        Route("/background", background),
        Route("/background-result", background_result),
        Route("/state", state),
        Route("/client", client),
    ],
    lifespan=lifespan,
)

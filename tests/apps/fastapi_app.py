"""A FastAPI app: routes, JSON with pydantic, form upload, streaming, background task, lifespan."""

import asyncio
import contextlib
from typing import Annotated

from fastapi import (
    BackgroundTasks,
    Depends,
    FastAPI,
    File,
    Form,
    HTTPException,
    Request,
    UploadFile,
    WebSocket,
    WebSocketDisconnect,
    WebSocketException,
    status,
)
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

BACKGROUND: list[str] = []


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI):
    print("FASTAPI-STARTUP", flush=True)
    yield {"model": "loaded"}
    print("FASTAPI-SHUTDOWN", flush=True)


app = FastAPI(lifespan=lifespan)


class Item(BaseModel):
    name: str
    price: float
    tags: list[str] = []


def common(q: str | None = None):
    return {"q": q}


@app.get("/")
async def root():
    return {"hello": "fastapi"}


@app.get("/items/{item_id}")
async def read_item(item_id: int, params: Annotated[dict, Depends(common)]):
    if item_id == 404:
        raise HTTPException(status_code=404, detail="no such item")
    return {"item_id": item_id, **params}


@app.post("/items")
async def create_item(item: Item):
    return {"name": item.name, "price": item.price, "tags": item.tags, "total": item.price * 2}


@app.post("/upload")
async def upload(name: Annotated[str, Form()], file: Annotated[UploadFile, File()]):
    content = await file.read()
    return {"name": name, "filename": file.filename, "size": len(content)}


@app.get("/stream")
async def stream():
    async def gen():
        for i in range(5):
            yield f"chunk {i}\n"
            await asyncio.sleep(0.01)

    return StreamingResponse(gen(), media_type="text/plain")


async def record(value: str):
    await asyncio.sleep(0.05)
    BACKGROUND.append(value)


@app.post("/background")
async def background(value: str, tasks: BackgroundTasks):
    tasks.add_task(record, value)
    return {"scheduled": value}


@app.get("/background-result")
async def background_result():
    return {"done": BACKGROUND}


@app.get("/state")
async def state(request: Request):
    return {"model": request.state.model}


@app.get("/sync")
def sync_route():
    # a plain def route runs in a worker thread (anyio.to_thread)
    return {"sync": True}


@app.websocket("/ws/{room}")
async def ws_room(websocket: WebSocket, room: str, token: str | None = None):
    if room == "forbidden":
        raise WebSocketException(code=status.WS_1008_POLICY_VIOLATION)
    await websocket.accept()
    await websocket.send_json({"room": room, "token": token})
    try:
        while True:
            text = await websocket.receive_text()
            await websocket.send_text(f"{room}: {text}")
    except WebSocketDisconnect:
        pass

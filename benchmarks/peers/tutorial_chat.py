"""The tutorial's chat server, kept exactly as the tutorial wrote it: the naive baseline.

``ConnectionManager.broadcast`` awaits each ``send_text`` in turn and catches only
``RuntimeError``, so one client that stops reading holds up every broadcast once its buffers are
full. That is the behaviour the benchmark measures; do not fix it here.

Run: ``python -m benchmarks.peers.tutorial_chat --port P`` (uvicorn with its default WebSocket
implementation and settings, log level warning).
"""

from __future__ import annotations

import argparse

import uvicorn
from fastapi import FastAPI, WebSocket, WebSocketDisconnect

app = FastAPI()


class ConnectionManager:
    def __init__(self) -> None:
        self.active_connections: set[WebSocket] = set()

    async def connect(self, websocket: WebSocket) -> None:
        await websocket.accept()
        self.active_connections.add(websocket)

    def disconnect(self, websocket: WebSocket) -> None:
        self.active_connections.remove(websocket)

    async def broadcast(self, message: str) -> None:
        # Disconnections can happen mid-broadcast, so we need to be safe.
        for connection in self.active_connections.copy():
            try:
                await connection.send_text(message)
            except RuntimeError:  # Catches issues like disconnected clients
                self.disconnect(connection)


manager = ConnectionManager()


@app.websocket("/ws/chat")
async def websocket_chat(websocket: WebSocket) -> None:
    await manager.connect(websocket)
    try:
        while True:
            message = await websocket.receive_text()
            await manager.broadcast(f"Client says: {message}")
    except WebSocketDisconnect:
        manager.disconnect(websocket)
        await manager.broadcast("A client has left the chat.")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args(argv)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()

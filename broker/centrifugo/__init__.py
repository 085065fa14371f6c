"""``/connection/websocket``: Centrifugo's client protocol v2 (JSON) over the broker's hub.

``endpoint``: admission and the route; ``reader``: Centrifugo commands to hub commands;
``connection``: the writer side, which renders what the hub sends as Centrifugo replies and
pushes; ``tokens``: where connection and subscription tokens are checked. docs/centrifugo.md.
"""

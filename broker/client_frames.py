"""Client frames off the socket without ``websockets``' parser, for the frames nearly all are.

``websockets`` parses each client frame with a chain of generators (``Protocol.parse``,
``Frame.parse``, four ``read_exact`` and an ``Opcode`` enum call, then the event list), about
twenty Python calls per frame: at moderate rates it is most of what a publication costs on its
way in (docs/performance.md). Nearly every client frame is a whole message in one frame: final,
text or binary, masked, no reserved bit, within the size limit. ``receive`` handles those itself
(unmask with ``websockets``' C ``apply_mask``, then ``BrokerWebSocketProtocol._deliver``, as
``handle_text`` and ``handle_bytes`` do), and hands every other frame to ``websockets`` whole,
in order, so its state machine sees a stream that always stops at a frame boundary:

* a control frame (ping, pong, close), a fragment or a continuation, or any frame while a
  fragmented message is in progress: gathered until complete (bounded by the size limit), then
  fed to ``websockets``, and its events handled as before (pongs, the close handshake,
  ``websocket.max_fragments``, the size limit of a fragmented message);
* a frame ``websockets`` refuses from its header alone (unmasked, a reserved bit or opcode, a
  declared length over ``websocket.max_message_bytes``): it and everything after it go to
  ``websockets`` at once, which fails the connection as before (1002, 1009), and the fast path
  ends for the connection.

Once a close frame is sent or received the fast path ends too, and everything goes through
``websockets`` (which discards what follows a close). A partial frame waits in one
``bytearray`` (appended to, never copied whole per read), at most the size limit plus a header.
Text is checked for UTF-8 by ``_deliver`` on both paths (1007), as before.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from websockets.speedups import apply_mask

if TYPE_CHECKING:
    from broker.transport import BrokerWebSocketProtocol

#: First header bytes of a whole message in one frame: FIN, no reserved bit, text or binary.
_TEXT, _BINARY = 0x81, 0x82
#: Opcodes ``websockets`` knows: continuation, text, binary, close, ping, pong.
_KNOWN_OPCODES = frozenset((0x0, 0x1, 0x2, 0x8, 0x9, 0xA))


def receive(protocol: BrokerWebSocketProtocol, data: bytes) -> None:
    """Handle ``data`` from the socket: whole messages here, everything else by ``websockets``
    (``protocol.parse_wire``). Only while ``protocol.fast_frames`` is true."""
    conn = protocol.conn
    if conn.close_sent is not None or conn.close_rcvd is not None:
        _give_up(protocol, data)
        return
    pending = protocol.frames_pending
    size = len(data)
    if pending is None and size >= 6 and conn.current_size is None:
        # The usual read: one whole message in one frame, alone, with a 7- or 16-bit length.
        # About a quarter of the general loop's bytecode below, which handles it the same way.
        head1 = data[0]
        if head1 == _TEXT or head1 == _BINARY:
            # Negative when unmasked, 127 for a 64-bit length: the general loop takes those.
            length = data[1] - 0x80
            start = 6
            if length == 126:
                length = (data[2] << 8) | data[3]
                start = 8
            elif length == 127:
                length = -1
            if length >= 0 and start + length == size:
                limit = conn.max_message_size
                if limit is None or length <= limit:
                    payload = apply_mask(data[start:], data[start - 4 : start])
                    if not protocol.close_sent:
                        protocol.curr_msg_data_type = "text" if head1 == _TEXT else "bytes"
                        protocol._deliver(payload)
                        if conn.close_sent is not None:  # failed it (invalid UTF-8: 1007)
                            _give_up(protocol, b"")
                    return
    buffer: bytes | bytearray
    if pending is not None:
        pending += data
        buffer = pending
    else:
        buffer = data
    size = len(buffer)
    limit = conn.max_message_size
    position = 0
    # The start of a run of frames for ``websockets``, fed when a whole message or the end comes.
    run = -1
    while size - position >= 2:
        head1 = buffer[position]
        head2 = buffer[position + 1]
        if not head2 & 0x80 or head1 & 0x70 or (head1 & 0x0F) not in _KNOWN_OPCODES:
            # Refused from the header: let ``websockets`` fail the connection now.
            _give_up(protocol, bytes(buffer[position if run < 0 else run :]))
            return
        length = head2 & 0x7F
        start = position + 2
        if length == 126:
            if size - start < 2:
                break
            length = (buffer[start] << 8) | buffer[start + 1]
            start += 2
        elif length == 127:
            if size - start < 8:
                break
            length = int.from_bytes(buffer[start : start + 8], "big")
            start += 8
        if limit is not None and length > limit:
            _give_up(protocol, bytes(buffer[position if run < 0 else run :]))
            return
        start += 4  # the mask
        end = start + length
        if end > size:
            break
        whole = head1 == _TEXT or head1 == _BINARY
        if whole and run >= 0:
            # A whole message after frames for ``websockets``: feed those first.
            if not _feed(protocol, buffer, run, position):
                _give_up(protocol, bytes(buffer[position:]))
                return
            run = -1
        if whole and conn.current_size is None:
            payload = apply_mask(buffer[start:end], buffer[start - 4 : start])
            if not protocol.close_sent:
                protocol.curr_msg_data_type = "text" if head1 == _TEXT else "bytes"
                protocol._deliver(payload)
                if conn.close_sent is not None:  # failed it (invalid UTF-8: 1007)
                    _give_up(protocol, bytes(buffer[end:]))
                    return
        elif run < 0:
            # Theirs (a control frame, a fragment, or any frame inside a fragmented message).
            run = position
        position = end
    if run >= 0:
        if not _feed(protocol, buffer, run, position):
            _give_up(protocol, bytes(buffer[position:]))
            return
    if position == size:
        protocol.frames_pending = None
    elif pending is not None:
        del pending[:position]
        protocol.frames_pending = pending
    else:
        protocol.frames_pending = bytearray(buffer[position:])


def _feed(
    protocol: BrokerWebSocketProtocol, buffer: bytes | bytearray, start: int, end: int
) -> bool:
    """Feed whole frames ``buffer[start:end]`` to ``websockets`` and handle their events.
    Returns whether the fast path may go on (no close sent or received, no failure)."""
    protocol.parse_wire(bytes(buffer[start:end]))
    conn = protocol.conn
    return (
        conn.parser_exc is None
        and conn.close_sent is None
        and conn.close_rcvd is None
        and protocol.fast_frames
    )


def _give_up(protocol: BrokerWebSocketProtocol, rest: bytes) -> None:
    """End the fast path for this connection: ``rest`` and all that follows go to
    ``websockets``."""
    protocol.fast_frames = False
    protocol.frames_pending = None
    if rest and protocol.conn.parser_exc is None:
        protocol.parse_wire(rest)

"""The kernel's view of a loopback TCP connection: bytes queued on each side, and whether the
server still holds its socket.

It asks the kernel for the exact pair of sockets with ``sock_diag`` netlink lookups, which cost
microseconds whatever else the machine runs; ``/proc/net/tcp`` lists every socket of the network
namespace (milliseconds per read on a busy machine) and is only the fallback.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import socket
import struct
from pathlib import Path

_NETLINK_SOCK_DIAG = 4
_SOCK_DIAG_BY_FAMILY = 20
_NLM_F_REQUEST = 1
_NLMSG_ERROR = 2
_NLMSG_HEADER = struct.Struct("=IHHII")
_REQUEST = struct.Struct("=BBBBI")  # family, protocol, ext, pad, states
_DIAG_MESSAGE = struct.Struct("=BBBB48sIIIII")  # ... sockid, expires, rqueue, wqueue, uid, inode
_NO_COOKIE = 0xFFFFFFFF
_ESTABLISHED = 1


@dataclasses.dataclass(frozen=True)
class KernelQueues:
    """What the kernel holds for one client's connection to the server."""

    #: Bytes queued in the server's socket (sent but not acknowledged, or not sent yet).
    server_send_queue: int
    #: Bytes waiting in the client's receive buffer.
    client_receive_queue: int
    #: Whether the server still has an established socket for this connection.
    server_holds: bool

    @property
    def total(self) -> int:
        return self.server_send_queue + self.client_receive_queue


def _sockid(local_port: int, remote_port: int) -> bytes:
    loopback = socket.inet_aton("127.0.0.1") + bytes(12)
    return (
        struct.pack("!HH", local_port, remote_port)
        + loopback
        + loopback
        + struct.pack("=III", 0, _NO_COOKIE, _NO_COOKIE)
    )


class SockDiag:
    """Exact socket lookups over one netlink socket; use as a context manager."""

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, _NETLINK_SOCK_DIAG)
        self._seq = 0

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> SockDiag:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def queues(self, local_port: int, remote_port: int) -> tuple[int, int, int] | None:
        """(state, receive queue, send queue) of the socket 127.0.0.1:local -> :remote."""
        self._seq += 1
        body = _REQUEST.pack(socket.AF_INET, socket.IPPROTO_TCP, 0, 0, 0xFFFFFFFF)
        body += _sockid(local_port, remote_port)
        header = _NLMSG_HEADER.pack(
            _NLMSG_HEADER.size + len(body), _SOCK_DIAG_BY_FAMILY, _NLM_F_REQUEST, self._seq, 0
        )
        self._sock.send(header + body)
        reply = self._sock.recv(65536)
        _, kind, _, _, _ = _NLMSG_HEADER.unpack_from(reply)
        if kind == _NLMSG_ERROR:
            (code,) = struct.unpack_from("=i", reply, _NLMSG_HEADER.size)
            if -code == errno.ENOENT:
                return None
            raise OSError(-code, "sock_diag lookup failed")
        fields = _DIAG_MESSAGE.unpack_from(reply, _NLMSG_HEADER.size)
        return fields[1], fields[6], fields[7]

    def connection(self, server_port: int, client_port: int) -> KernelQueues:
        server = self.queues(server_port, client_port)
        client = self.queues(client_port, server_port)
        # Once the connection is gone, the lookup may find the server's listening socket.
        holds = server is not None and server[0] == _ESTABLISHED
        return KernelQueues(
            server_send_queue=server[2] if server is not None and holds else 0,
            client_receive_queue=client[1] if client is not None else 0,
            server_holds=holds,
        )


def _from_proc(server_port: int, client_ports: list[int]) -> dict[int, KernelQueues]:
    loopback = "0100007F"
    server = f"{loopback}:{server_port:04X}"
    wanted = {f"{loopback}:{port:04X}": port for port in client_ports}
    server_queue = dict.fromkeys(client_ports, 0)
    client_queue = dict.fromkeys(client_ports, 0)
    server_holds = dict.fromkeys(client_ports, False)
    with Path("/proc/net/tcp").open() as lines:
        next(lines, None)
        for line in lines:
            fields = line.split()
            local, remote, state, queues = fields[1], fields[2], fields[3], fields[4]
            if local in wanted and remote == server:
                client_queue[wanted[local]] = int(queues.split(":")[1], 16)
            elif local == server and remote in wanted:
                server_holds[wanted[remote]] = state == "01"
                server_queue[wanted[remote]] = int(queues.split(":")[0], 16)
    return {
        port: KernelQueues(server_queue[port], client_queue[port], server_holds[port])
        for port in client_ports
    }


class KernelView:
    """Kernel queues of several clients of one server: netlink, else ``/proc/net/tcp``."""

    def __init__(self) -> None:
        self._diag: SockDiag | None = None
        with contextlib.suppress(OSError):
            self._diag = SockDiag()

    def close(self) -> None:
        if self._diag is not None:
            self._diag.close()

    def connections(self, server_port: int, client_ports: list[int]) -> dict[int, KernelQueues]:
        if self._diag is not None:
            try:
                return {port: self._diag.connection(server_port, port) for port in client_ports}
            except OSError:
                self._diag.close()
                self._diag = None
        return _from_proc(server_port, client_ports)


def tcp_wmem_max() -> int:
    """The largest send buffer the kernel autotunes a socket to (``tcp_wmem`` max)."""
    try:
        return int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2])
    except (OSError, ValueError, IndexError):
        return 0

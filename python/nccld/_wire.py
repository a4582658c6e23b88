"""Frames, finding the socket and checking who serves it: docs/protocol.md's transport rules."""

from __future__ import annotations

import os
import pwd
import socket
import struct
from collections.abc import Iterable, Mapping
from typing import Any

import msgpack  # type: ignore[import-untyped]

from .errors import ErrorCode, NccldError

PROTOCOL_VERSION = 2
MAX_REQUEST_ID = 0xFFFF_FFFF
HEADER = struct.Struct(">I")
#: Largest reply frame accepted (the protocol asks for at least maxFrameBytes + 1 KiB; the SDK takes 64 MiB).
MAX_REPLY_BYTES = 64 << 20
SYSTEM_SOCKET = "/run/nccld/nccld.sock"


def encode_frame(msg: Mapping[str, Any]) -> bytes:
    """One frame: a 4-byte big-endian length, then the MessagePack map (str as str, bytes as bin)."""
    body: bytes = msgpack.packb(dict(msg), use_bin_type=True)
    return HEADER.pack(len(body)) + body


def decode_body(body: bytes) -> dict[str, Any]:
    """A frame's body as a dict; NccldError(BAD_FRAME) if it is not exactly one map."""
    try:
        msg = msgpack.unpackb(body, raw=False, strict_map_key=False)
    except Exception as exc:  # msgpack raises several kinds; ExtraData included
        raise NccldError(ErrorCode.BAD_FRAME, f"nccld sent a frame that is not one MessagePack map: {exc}") from None
    if not isinstance(msg, dict):
        raise NccldError(ErrorCode.BAD_FRAME, "nccld sent a frame that is not a map")
    return msg


# ---------------------------------------------------------------------------------------------
# Finding the socket


def _node_tmpdir(env: Mapping[str, str]) -> str:
    """Node's os.tmpdir() on POSIX: $TMPDIR, else $TMP, else $TEMP, else /tmp, no trailing slash."""
    path = env.get("TMPDIR") or env.get("TMP") or env.get("TEMP") or "/tmp"
    if len(path) > 1 and path.endswith("/"):
        path = path[:-1]
    return path


def own_socket_path(env: Mapping[str, str] | None = None) -> str:
    """The path of the user's own daemon (step 2 of "Finding the socket"), NCCLD_SOCKET aside."""
    env = os.environ if env is None else env
    if os.getuid() == 0:
        return SYSTEM_SOCKET
    xdg = env.get("XDG_RUNTIME_DIR")
    if xdg:
        return os.path.join(xdg, "nccld", "nccld.sock")
    return os.path.join(_node_tmpdir(env), f"nccld-{os.getuid()}", "nccld.sock")


def default_socket_path(env: Mapping[str, str] | None = None) -> str:
    """The socket a client given no path uses, in the protocol's order.

    1. ``NCCLD_SOCKET`` if set and not empty; 2. the user's own daemon's path if a file exists
    there; 3. else ``/run/nccld/nccld.sock`` if it exists; 4. else the user's own path.
    """
    env = os.environ if env is None else env
    explicit = env.get("NCCLD_SOCKET")
    if explicit:
        return explicit
    own = own_socket_path(env)
    if os.path.exists(own) or not os.path.exists(SYSTEM_SOCKET):
        return own
    return SYSTEM_SOCKET


# ---------------------------------------------------------------------------------------------
# Checking who serves the socket


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process that called listen() on the other end (SO_PEERCRED)."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    return pid, uid, gid


def default_trusted_uids(env: Mapping[str, str] | None = None) -> list[int]:
    """The uid of the user ``nccld`` (the system service's), and those in NCCLD_TRUSTED_UIDS."""
    env = os.environ if env is None else env
    out = [int(s.strip()) for s in env.get("NCCLD_TRUSTED_UIDS", "").split(",") if s.strip().isdigit()]
    try:
        out.append(pwd.getpwnam("nccld").pw_uid)
    except KeyError:
        pass
    return out


def check_server(path: str, uid: int, trusted_uids: Iterable[int] | None) -> None:
    """Raises NccldError(CONNECT) unless ``uid`` is root, our effective uid, or a trusted one."""
    me = os.geteuid()
    if uid in (0, me):
        return
    allowed = default_trusted_uids() if trusted_uids is None else list(trusted_uids)
    if uid in allowed:
        return
    raise NccldError(
        ErrorCode.CONNECT,
        f"{path} is served by uid {uid}, which is neither root, you ({me}) nor a trusted nccld user: "
        f"refusing to send it anything (trust it with NCCLD_TRUSTED_UIDS={uid})",
        {"uid": uid},
    )

"""The one exception class of the client, and the protocol's stable error codes."""

from __future__ import annotations

from typing import Any, Final

__all__ = ["NccldError", "ErrorCode"]


class ErrorCode:
    """The stable codes of docs/protocol.md ("Error codes"), as plain strings.

    Codes never change meaning; new ones may be added, so compare ``err.code`` with these
    constants and treat a code you do not know as :attr:`INTERNAL`.
    """

    BAD_FRAME: Final = "NCCLD_ERR_BAD_FRAME"
    FRAME_TOO_LARGE: Final = "NCCLD_ERR_FRAME_TOO_LARGE"
    UNKNOWN_TYPE: Final = "NCCLD_ERR_UNKNOWN_TYPE"
    HELLO_REQUIRED: Final = "NCCLD_ERR_HELLO_REQUIRED"
    VERSION: Final = "NCCLD_ERR_VERSION"
    BAD_REQUEST: Final = "NCCLD_ERR_BAD_REQUEST"
    DUPLICATE_ID: Final = "NCCLD_ERR_DUPLICATE_ID"
    BAD_DTYPE: Final = "NCCLD_ERR_BAD_DTYPE"
    BAD_OP: Final = "NCCLD_ERR_BAD_OP"
    BAD_COUNT: Final = "NCCLD_ERR_BAD_COUNT"
    BUFFER_COUNT: Final = "NCCLD_ERR_BUFFER_COUNT"
    WRONG_RANK: Final = "NCCLD_ERR_WRONG_RANK"
    WRONG_DEVICE: Final = "NCCLD_ERR_WRONG_DEVICE"
    WRONG_BACKEND: Final = "NCCLD_ERR_WRONG_BACKEND"
    NO_SUCH_BUFFER: Final = "NCCLD_ERR_NO_SUCH_BUFFER"
    BUFFER_TOO_SMALL: Final = "NCCLD_ERR_BUFFER_TOO_SMALL"
    BUFFER_OVERLAP: Final = "NCCLD_ERR_BUFFER_OVERLAP"
    BAD_ALIGNMENT: Final = "NCCLD_ERR_BAD_ALIGNMENT"
    PERMISSION: Final = "NCCLD_ERR_PERMISSION"
    BUSY: Final = "NCCLD_ERR_BUSY"
    TOO_MANY_CONNECTIONS: Final = "NCCLD_ERR_TOO_MANY_CONNECTIONS"
    HELLO_TIMEOUT: Final = "NCCLD_ERR_HELLO_TIMEOUT"
    SLOW_READER: Final = "NCCLD_ERR_SLOW_READER"
    TOO_MANY_BUFFERS: Final = "NCCLD_ERR_TOO_MANY_BUFFERS"
    BAD_BUFFER: Final = "NCCLD_ERR_BAD_BUFFER"
    RESOURCE_EXHAUSTED: Final = "NCCLD_ERR_RESOURCE_EXHAUSTED"
    SHUTTING_DOWN: Final = "NCCLD_ERR_SHUTTING_DOWN"
    NOT_READY: Final = "NCCLD_ERR_NOT_READY"
    TIMEOUT: Final = "NCCLD_ERR_TIMEOUT"
    ABORTED: Final = "NCCLD_ERR_ABORTED"
    DEVICE_LOST: Final = "NCCLD_ERR_DEVICE_LOST"
    WORLD_FAILED: Final = "NCCLD_ERR_WORLD_FAILED"
    NCCL: Final = "NCCLD_ERR_NCCL"
    CUDA: Final = "NCCLD_ERR_CUDA"
    GPU_UNAVAILABLE: Final = "NCCLD_ERR_GPU_UNAVAILABLE"
    CONNECTION_CLOSED: Final = "NCCLD_ERR_CONNECTION_CLOSED"
    CONNECT: Final = "NCCLD_ERR_CONNECT"
    INVALID_ARG: Final = "NCCLD_ERR_INVALID_ARG"
    BUFFER_CLOSED: Final = "NCCLD_ERR_BUFFER_CLOSED"
    CLOSED: Final = "NCCLD_ERR_CLOSED"
    MISMATCH: Final = "NCCLD_ERR_MISMATCH"
    PEER_LOST: Final = "NCCLD_ERR_PEER_LOST"
    GROUP_RANK_TAKEN: Final = "NCCLD_ERR_GROUP_RANK_TAKEN"
    GROUP_SIZE: Final = "NCCLD_ERR_GROUP_SIZE"
    GROUP_DEVICE_TAKEN: Final = "NCCLD_ERR_GROUP_DEVICE_TAKEN"
    NO_SUCH_GROUP: Final = "NCCLD_ERR_NO_SUCH_GROUP"
    INTERNAL: Final = "NCCLD_ERR_INTERNAL"

    @classmethod
    def all(cls) -> frozenset[str]:
        """Every code this version of the client knows."""
        return frozenset(v for k, v in vars(cls).items() if k.isupper() and isinstance(v, str))


class NccldError(Exception):
    """Every failure the client reports: the daemon's error replies and the client's own.

    ``code`` is the protocol's stable string code (``"NCCLD_ERR_..."``); ``message`` is for people
    and may change; ``details`` holds the other fields of the error reply (``invalidId``,
    ``duplicateId``, ``supported``, ``buffers``, ``ranks``, ``seq``, ``mismatch``, ...), empty
    when there are none. A code the daemon sends that this client does not know is kept as sent.
    """

    code: str
    message: str
    details: dict[str, Any]

    def __init__(self, code: str, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.details = dict(details) if details else {}

    def __reduce__(self) -> tuple[Any, ...]:  # picklable across processes
        return (type(self), (self.code, self.message, self.details))

    def __repr__(self) -> str:
        extra = f", {self.details!r}" if self.details else ""
        return f"NccldError({self.code!r}, {self.message!r}{extra})"

    @classmethod
    def from_reply(cls, msg: dict[str, Any]) -> NccldError:
        """The error for a ``{type: "error", ...}`` reply."""
        code = msg.get("code")
        message = msg.get("message")
        details = {k: v for k, v in msg.items() if k not in ("type", "id", "code", "message")}
        return cls(
            code if isinstance(code, str) else ErrorCode.INTERNAL,
            message if isinstance(message, str) else "nccld sent an error without a message",
            details,
        )

"""Sessions: the protocol between something that trains (a host) and something that shows it
(a client), its transport, the session log and the registry of sessions on this machine.

* watch/        ``workbench.watch``: the engine's Instruments on a loop the user owns (a host);
                its hooks and step boundaries, breakpoints, outputs, ranks, unwrapping.
* live.py       a watched loop's live side: what it publishes, the commands clients send it.
* protocol.py   frozen message/command dataclasses <-> versioned JSON lines (encode, decode).
* transport.py  SessionServer (loopback TCP or Unix socket, token, replay) and connect().
* log.py        RUN_DIR/session.jsonl: the JSON-lines log every host writes, read back after a crash.
* registry.py   RUN_DIR/session.json and the token file; list_sessions(root).

No textual, no workbench.tui/commands/bench/profiling imports: the TUI and the commands sit above.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from workbench.lazy import lazy_exports

if TYPE_CHECKING:  # pragma: no cover
    from workbench.session.protocol import PROTOCOL_VERSION, ProtocolError, decode, encode
    from workbench.session.registry import SessionInfo, list_sessions
    from workbench.session.transport import (
        ClientConnection,
        ReplayConnection,
        SessionError,
        SessionReadOnly,
        SessionRefused,
        SessionServer,
        connect,
    )

# Resolved on first use: a client that only lists sessions loads no socket or protocol code,
# and `from workbench.session import watch` keeps importing torch only then.
__getattr__ = lazy_exports(__name__, {
    **dict.fromkeys(("PROTOCOL_VERSION", "ProtocolError", "decode", "encode"), "protocol"),
    **dict.fromkeys(("SessionInfo", "list_sessions"), "registry"),
    **dict.fromkeys(("ClientConnection", "ReplayConnection", "SessionError", "SessionReadOnly", "SessionRefused",
                     "SessionServer", "connect"), "transport"),
})

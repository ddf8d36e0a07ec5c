"""Sessions: the protocol between something that trains (a host) and something that shows it
(a client), its transport, the session log and the registry of sessions on this machine.

* watch.py      ``workbench.watch``: the engine's Instruments on a loop the user owns (a host).
* protocol.py   frozen message/command dataclasses <-> versioned JSON lines (encode, decode).
* transport.py  SessionServer (loopback TCP or Unix socket, token, replay) and connect().
* log.py        RUN_DIR/session.jsonl: the JSON-lines log every host writes, read back after a crash.
* registry.py   RUN_DIR/session.json and the token file; list_sessions(root).

No textual, no workbench.tui/commands/bench/profiling imports: the TUI and the commands sit above.
"""

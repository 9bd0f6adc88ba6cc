"""Server-sent events, sans-IO: parse what an upstream sends, frame what we send.

The parser takes bytes in whatever pieces the network delivers and returns complete
events; it never touches a socket, so it is tested synchronously. It runs once per
network read of every streamed answer, so it lives in the hot path (`edge.fastpath`:
the compiled module, or its pure-Python twin); this module is the name the rest of edge
imports it by.
"""

from __future__ import annotations

from .fastpath import DONE as DONE
from .fastpath import MAX_EVENT_BYTES as MAX_EVENT_BYTES
from .fastpath import SSEError as SSEError
from .fastpath import SSEParser as SSEParser
from .fastpath import frame as frame
from .fastpath import frame_event as frame_event

__all__ = ["DONE", "MAX_EVENT_BYTES", "SSEError", "SSEParser", "frame", "frame_event"]

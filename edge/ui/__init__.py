"""The dashboard at /ui: static files shipped in this package, served with strict headers.

The page is plain HTML, CSS and JavaScript (no build step, nothing fetched from anywhere
else); everything it shows it reads from `/admin/*` with the admin key the operator types
in. So the files themselves are public, and the security is in the headers: a CSP that
allows only this origin's scripts and styles (no inline script, no framing), no referrer,
no MIME sniffing. Without an admin key configured, /ui is a page saying how to set one and
every other /ui path is a 404: there is nothing the page could show.

The files are read once, on first use, from the installed package (`importlib.resources`),
so a wheel serves exactly what it shipped.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

__all__ = ["HEADERS", "UIFile", "lookup"]

HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"content-security-policy",
     b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
     b"connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-content-type-options", b"nosniff"),
    (b"cache-control", b"no-cache"),
)

UIFile = tuple[bytes, bytes]  # (content type, body)

_TYPES = {"html": b"text/html; charset=utf-8", "js": b"text/javascript; charset=utf-8",
          "css": b"text/css; charset=utf-8"}
_FILES = {"/ui": "index.html", "/ui/": "index.html", "/ui/app.js": "app.js",
          "/ui/app.css": "app.css"}
_NOT_FOUND: UIFile = (b"text/plain; charset=utf-8", b"Not found\n")


@cache
def _read(name: str) -> UIFile:
    body = resources.files(__name__).joinpath(name).read_bytes()
    return _TYPES[name.rpartition(".")[2]], body


def lookup(path: str, admin_enabled: bool) -> tuple[int, UIFile]:
    """The status and file for a /ui path: the setup page alone without an admin key."""
    if not admin_enabled:
        if path in ("/ui", "/ui/"):
            return 200, _read("setup.html")
        return 404, _NOT_FOUND
    name = _FILES.get(path)
    if name is None:
        return 404, _NOT_FOUND
    return 200, _read(name)

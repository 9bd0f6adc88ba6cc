"""edge: an intercepting proxy for LLM APIs (OpenAI and Anthropic formats).

The library surface is small on purpose: load a config, build the ASGI app, or serve it.
"""

from ._version import __version__ as __version__
from .app import build_app as build_app
from .config import load_config as load_config
from .server import serve as serve

__all__ = ["__version__", "build_app", "load_config", "serve"]

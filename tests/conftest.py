"""Fixtures shared by the suite: real Redis and PostgreSQL servers, real edge /
mock-upstream processes, and `impl`, each implementation of the hot path in turn."""

from _postgres import *  # noqa: F403
from _redis import *  # noqa: F403
from _servers import *  # noqa: F403
from _twins import impl  # noqa: F401 - a fixture, found by name

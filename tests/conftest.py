"""Fixtures shared by the suite: real Redis servers and real edge / mock-upstream processes."""

from _redis import *  # noqa: F403
from _servers import *  # noqa: F403

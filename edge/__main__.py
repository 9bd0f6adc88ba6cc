"""`python -m edge` is the `edge` command."""

import sys

from .cli import main

sys.exit(main())

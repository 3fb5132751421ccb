"""``python -m authz``: the same as the ``mcp-authz`` command."""

import sys

from authz.cli import main

sys.exit(main())

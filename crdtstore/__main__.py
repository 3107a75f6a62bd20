"""``python -m crdtstore`` is the ``crdtstore`` command."""

import sys

from crdtstore.cli import main

sys.exit(main())

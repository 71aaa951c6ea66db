"""``python -m dbloss`` (and ``torchrun -m dbloss``) runs the ``dbloss`` command."""

import sys

from dbloss.cli import main

sys.exit(main())

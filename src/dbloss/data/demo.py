"""Deprecated name of :mod:`dbloss.data.synthetic` (kept while other code moves; will be removed)."""

from dbloss.data.synthetic import *  # noqa: F401,F403
from dbloss.data.synthetic import find_demo_dataset, generate_demo_dataset, generate_source_dataset  # noqa: F401

"""``python -m slimkit`` is the ``slimkit`` command."""

from .cli import main

raise SystemExit(main())

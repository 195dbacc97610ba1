"""``python -m consumer`` is the ``metadata-consumer`` command."""

from consumer.cli import main

raise SystemExit(main())

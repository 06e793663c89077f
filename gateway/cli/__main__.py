"""``python -m gateway.cli``: the same as the ``fxgw`` command."""

from gateway.cli.main import main

raise SystemExit(main())

"""``python -m proxy.devissuer``: the local issuer as a standalone process."""

from proxy.devissuer.cli import main

raise SystemExit(main())

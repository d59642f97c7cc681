"""Allow ``python -m clusterpki``."""

from clusterpki.cli import main

raise SystemExit(main())

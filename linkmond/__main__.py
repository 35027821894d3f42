"""``python -m linkmond``."""

from linkmond.cli import main

raise SystemExit(main())

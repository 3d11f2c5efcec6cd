"""`python -m offline.importing ...`: the `import` command on its own."""

from offline.importing.cli import main

raise SystemExit(main())

"""``python -m optkit.data ROOT [--size N]``: write scikit-learn's digits as an ImageFolder."""

from optkit.data.digits import main

raise SystemExit(main())

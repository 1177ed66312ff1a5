"""``python -m search`` is the same as the ``resnet-hpo`` console script."""

import sys

from search.cli import main

sys.exit(main())

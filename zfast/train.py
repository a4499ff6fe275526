"""``python -m zfast.train`` and ``torchrun ... -m zfast.train``: the zfast-train command (``zfast.cli.train``)."""

import sys

from .cli.train import main

if __name__ == "__main__":
    sys.exit(main())

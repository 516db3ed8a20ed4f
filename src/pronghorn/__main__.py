"""``python -m pronghorn`` and the ``pronghorn`` console script."""

import sys

from pronghorn import cli


def main() -> None:
    sys.exit(cli.main())


if __name__ == "__main__":
    main()

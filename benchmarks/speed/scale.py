"""Entry point of ``bouquet bench scale`` (see README.md)."""

import sys

from bouquet.app.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "scale", *sys.argv[1:]]))

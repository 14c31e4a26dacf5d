"""Entry point of ``bouquet bench speed`` (see README.md); all arguments are passed through."""

import argparse
import sys

from bouquet.app.bench.speed import add_arguments, main_args

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    add_arguments(parser)
    sys.exit(main_args(parser.parse_args()))

"""Entry point of ``python -m pyjraft.bench``; see `pyjraft.bench.driver`."""

import sys

from pyjraft.bench.driver import main

if __name__ == "__main__":
    sys.exit(main())

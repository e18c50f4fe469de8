#!/usr/bin/env python
"""viz.py: NOT YET BUILT (issue #7 adds grids of rendered states, action plots, videos, report).

Until then, every ProtoSAC run of a drawable env already writes `<run>/prototypes.png`.
"""

import sys


def main(argv=None) -> int:
    print("viz.py: not yet: prototype grids/videos/report arrive with issue #7; "
          "each ProtoSAC run already writes <run>/prototypes.png", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())

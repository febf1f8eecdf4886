"""``python -m hub``: the command line of :mod:`hub.edge.cli`."""

from hub.edge.cli import main

if __name__ == "__main__":
    raise SystemExit(main())

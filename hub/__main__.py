"""``python -m hub``: the command line of :mod:`hub.cli`."""

from hub.cli import main

if __name__ == "__main__":
    raise SystemExit(main())

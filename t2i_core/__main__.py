"""`python -m t2i_core <command>`: see t2i_core.cli."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())

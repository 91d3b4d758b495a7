"""Allow ``python -m taskgrouping``."""

from taskgrouping.cli import main

if __name__ == "__main__":
    raise SystemExit(main())

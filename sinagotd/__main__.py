"""Entry point of `sinagotd`."""

import sys


def main(argv: list[str] | None = None) -> int:
    print("sinagotd: the daemon is not built yet", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())

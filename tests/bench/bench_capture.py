"""Benchmark: a script's captured output, a progress bar's worth of carriage returns.

    python tests/bench/bench_capture.py [N]

Prints N `\\r`-separated progress updates (default 40000, no newline until the end) through
`sinagot.capture.output_to`, then 4 N, and reports the time per update of each. Capture is
linear when both are about the same; it used to be quadratic (14 s for 40000). Exit status 1
when the lines captured are not the last update alone, or (at N >= 40000, where the times are
not milliseconds of noise) 4 N costs over 8 times N.
"""

from __future__ import annotations

import reprlib
import sys
import time

from _common import machine

from sinagot.capture import output_to

LINEAR_AT = 40000  # the linearity target counts from this N on; below, only the answers


def capture(n: int) -> tuple[float, list[str]]:
    lines: list[str] = []
    start = time.perf_counter()
    with output_to(lines.append):
        for i in range(1, n + 1):
            print(f"\rprogress {i}/{n}", end="")
        print()
    return time.perf_counter() - start, lines


def main() -> int:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 40000
    small, lines = capture(n)
    large, more = capture(4 * n)
    ok = lines == [f"progress {n}/{n}"] and more == [f"progress {4 * n}/{4 * n}"]
    for count, seconds in ((n, small), (4 * n, large)):
        print(f"{count:>8} updates: {seconds:.3f} s, {seconds / count * 1e6:.2f} us per update")
    print(machine())
    if not ok:
        print(f"FAILED: captured {reprlib.repr(lines)} and {reprlib.repr(more)}")
    linear = large <= 8 * small or n < LINEAR_AT
    if not linear:
        print(f"FAILED: 4 N cost {large / small:.1f} times N (not linear)")
    elif large > 8 * small:
        print(f"4 N cost {large / small:.1f} times N (target <= 8 at N >= {LINEAR_AT})")
    return 0 if ok and linear else 1


if __name__ == "__main__":
    sys.exit(main())

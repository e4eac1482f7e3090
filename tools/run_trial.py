"""Run trial and end with one plain summary line: ``N passed, N failed``.

Trial's own summary ("PASSED (successes=N)") stays above it.  The exit
code is trial's, so a failing suite still fails the build.
"""

from __future__ import annotations

import re
import subprocess
import sys


def summarize(output: str) -> tuple[int, int, int]:
    """(passed, failed, skipped) from trial's last status line."""
    matches = re.findall(r"^(?:PASSED|FAILED) \(([^)]*)\)\s*$", output, re.M)
    if not matches:
        return 0, 0, 0
    counts = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", matches[-1])}
    passed = counts.get("successes", 0) + counts.get("expectedFailures", 0)
    failed = counts.get("failures", 0) + counts.get("errors", 0) + counts.get("unexpectedSuccesses", 0)
    return passed, failed, counts.get("skips", 0)


def main() -> int:
    proc = subprocess.Popen(
        [sys.executable, "-b", "-m", "twisted.trial", *sys.argv[1:]],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
    )
    assert proc.stdout is not None
    chunks = []
    for line in proc.stdout:
        sys.stdout.write(line)
        sys.stdout.flush()
        chunks.append(line)
    code = proc.wait()
    passed, failed, skipped = summarize("".join(chunks))
    if code != 0 and failed == 0:
        failed = 1  # trial failed before or outside any test (import error ...)
    suffix = f", {skipped} skipped" if skipped else ""
    print(f"{passed} passed, {failed} failed{suffix}")
    return code


if __name__ == "__main__":
    sys.exit(main())

"""Run trial once per backend and end with one plain summary line each:
``N passed, N failed``.

``--backends sqlite,postgres`` (or ``CHATSERVER_TEST_BACKENDS``) runs the
whole suite once on SQLite with the in-process hub and once on PostgreSQL
with Redis.  For the second pass it starts one PostgreSQL cluster and one
redis-server (tests/backends.py) for the whole run, hands their addresses
to the tests in the environment, and stops them by pid at the end.  Tests
about one backend only skip themselves in the other pass.

Trial's own summary ("PASSED (successes=N)") stays above each line.  The
exit code is the first failing pass's, so a failing suite still fails the
build.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BACKENDS = ("sqlite", "postgres")


def summarize(output: str) -> tuple[int, int, int]:
    """(passed, failed, skipped) from trial's last status line."""
    matches = re.findall(r"^(?:PASSED|FAILED) \(([^)]*)\)\s*$", output, re.M)
    if not matches:
        return 0, 0, 0
    counts = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", matches[-1])}
    passed = counts.get("successes", 0) + counts.get("expectedFailures", 0)
    failed = counts.get("failures", 0) + counts.get("errors", 0) + counts.get("unexpectedSuccesses", 0)
    return passed, failed, counts.get("skips", 0)


def run_pass(trial_args: list[str], env: dict[str, str], label: str) -> int:
    proc = subprocess.Popen(
        [sys.executable, "-b", "-m", "twisted.trial", *trial_args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        env=env,
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
    print(f"{label}{passed} passed, {failed} failed{suffix}", flush=True)
    return code


def main() -> int:
    args = sys.argv[1:]
    wanted = os.environ.get("CHATSERVER_TEST_BACKENDS", "sqlite")
    if args and args[0].startswith("--backends="):
        wanted = args.pop(0).split("=", 1)[1]
    backends = [b.strip() for b in wanted.split(",") if b.strip()]
    unknown = [b for b in backends if b not in BACKENDS]
    if unknown or not backends:
        print(f"run_trial: backends must be among {', '.join(BACKENDS)}, not {wanted!r}", file=sys.stderr)
        return 2
    sys.path.insert(0, str(ROOT))
    from tests import backends as servers
    from tests.support import BACKEND_ENV

    first_failure = 0
    for backend in backends:
        env = dict(os.environ, **{BACKEND_ENV: backend})
        label = f"[{backend}] " if len(backends) > 1 else ""
        if backend == "sqlite":
            code = run_pass(args, env, label)
        else:
            missing = servers.missing()
            if missing:
                print(f"run_trial: cannot run the {backend} pass: {missing}", file=sys.stderr)
                code = 1
            else:
                pg = servers.Postgres().start()
                redis = servers.Redis().start()
                try:
                    env[servers.POSTGRES_ENV] = pg.url
                    env[servers.REDIS_ENV] = redis.url
                    code = run_pass(args, env, label)
                finally:
                    redis.stop()
                    pg.stop()
        first_failure = first_failure or code
    return first_failure


if __name__ == "__main__":
    sys.exit(main())

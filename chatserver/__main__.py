"""``python -m chatserver [OPTIONS]``: the server in the foreground, as
``twistd -n chatserver [OPTIONS]`` (the systemd unit runs twistd itself)."""

import sys

from twisted.scripts.twistd import run


def main() -> None:
    sys.argv = ["twistd", "--nodaemon", "--pidfile=", "chatserver", *sys.argv[1:]]
    run()


if __name__ == "__main__":
    main()

"""``chatserver-admin write-config DIR``: the shipped configuration file,
systemd unit and logrotate file, written for this installation.

They are package data (``chatserver/etc``, the checkout's ``etc/``), so
an installed wheel has them too.  What is written differs from them only
where an installation must: the configuration's data and log directories
(absolute: ``/var/lib/chatserver`` and ``/var/log/chatserver`` unless
given), the unit's ``twistd`` (this environment's) and ``--config`` (the
file written), and the logrotate file's log directory.  An existing file
is not replaced without ``--force``.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from importlib import resources
from pathlib import Path
from typing import Any

#: The shipped files, in chatserver/etc, by the name they are written as.
SHIPPED = {
    "chatserver.ini": "chatserver.ini",
    "chatserver.service": "systemd/chatserver.service",
    "chatserver.logrotate": "logrotate.d/chatserver",
}
#: Where each goes on a Debian-like system, for the message.
INSTALL_AS = {
    "chatserver.ini": "/etc/chatserver/chatserver.ini",
    "chatserver.service": "/etc/systemd/system/chatserver.service",
    "chatserver.logrotate": "/etc/logrotate.d/chatserver",
}
#: No secret is in them (passwords are in the files that password_file names),
#: and the service user must read the configuration.
MODES = {"chatserver.ini": 0o644, "chatserver.service": 0o644, "chatserver.logrotate": 0o644}
DATA_DIR, LOG_DIR = "/var/lib/chatserver", "/var/log/chatserver"


class InstallError(Exception):
    """One line for the operator."""


def add_parser(sub: Any, parent: argparse.ArgumentParser) -> None:
    write = sub.add_parser(
        "write-config",
        parents=[parent],
        help="write the configuration file, systemd unit and logrotate file for this installation",
    )
    write.add_argument("dir", type=Path, help="the directory to write them in (made if need be)")
    write.add_argument("--data-dir", dest="target_data_dir", default=DATA_DIR, help=f"default {DATA_DIR}")
    write.add_argument("--log-dir", dest="target_log_dir", default=LOG_DIR, help=f"default {LOG_DIR}")
    write.add_argument("--force", action="store_true", help="replace files that exist")


def shipped(name: str) -> str:
    """The text of a shipped file (``SHIPPED`` value)."""
    return (resources.files("chatserver") / "etc" / name).read_text(encoding="utf-8")


def _setting(text: str, key: str, value: str) -> str:
    """``text`` with the uncommented ``key = ...`` line set to ``value``."""
    new, count = re.subn(rf"(?m)^{re.escape(key)} = .*$", f"{key} = {value}", text, count=1)
    if count != 1:
        raise InstallError(f"the shipped configuration has no {key} line")
    return new


def render(directory: Path, data_dir: str, log_dir: str) -> dict[str, str]:
    """The three files' texts, by the name they are written as."""
    for given in (data_dir, log_dir):
        if not os.path.isabs(given) or any(c.isspace() for c in given):
            raise InstallError(f"{given}: give an absolute directory, without spaces")
    config_path = directory.resolve() / "chatserver.ini"
    ini = _setting(shipped(SHIPPED["chatserver.ini"]), "data_dir", data_dir)
    ini = _setting(ini, "log_dir", log_dir)
    twistd = Path(sys.executable).parent / "twistd"
    unit = shipped(SHIPPED["chatserver.service"])
    unit, count = re.subn(
        r"(?m)^ExecStart=\S+/twistd (.*) --config \S+$",
        lambda m: f"ExecStart={twistd} {m.group(1)} --config {config_path}",
        unit,
    )
    if count != 1:
        raise InstallError("the shipped unit has no ExecStart line to adapt")
    unit = unit.replace("/var/lib/chatserver", data_dir).replace("/var/log/chatserver", log_dir)
    rotate = shipped(SHIPPED["chatserver.logrotate"]).replace("/var/log/chatserver", log_dir)
    return {"chatserver.ini": ini, "chatserver.service": unit, "chatserver.logrotate": rotate}


def write_config(directory: Path, data_dir: str, log_dir: str, force: bool) -> dict[str, Any]:
    texts = render(directory, data_dir, log_dir)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InstallError(f"cannot make {directory}: {e.strerror}") from None
    paths = {name: directory / name for name in texts}
    if not force:
        taken = [str(p) for p in paths.values() if p.exists()]
        if taken:
            raise InstallError(
                f"{', '.join(taken)} exist{'s' if len(taken) == 1 else ''}: give --force to replace"
            )
    for name, text in texts.items():
        path = paths[name]
        try:
            path.unlink(missing_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, MODES[name])
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
            os.chmod(path, MODES[name])
        except OSError as e:
            raise InstallError(f"cannot write {path}: {e.strerror}") from None
    # The unit names the configuration where it was written.
    install_as = dict(INSTALL_AS, **{"chatserver.ini": str(paths["chatserver.ini"].resolve())})
    return {
        "files": {name: str(path) for name, path in paths.items()},
        "install_as": install_as,
        "data_dir": data_dir,
        "log_dir": log_dir,
    }


def describe(data: dict[str, Any]) -> str:
    lines = ["wrote:"]
    for name, path in data["files"].items():
        target = data["install_as"][name]
        lines.append(
            f"  {path}" + ("" if Path(path).resolve() == Path(target) else f"  (install as {target})")
        )
    lines += [
        f"data in {data['data_dir']}, logs in {data['log_dir']}.  Then, as root:",
        "  useradd --system --home-dir /var/lib/chatserver --shell /usr/sbin/nologin chatserver",
        "  systemctl daemon-reload && systemctl enable --now chatserver",
        "(README.rst, 'Running as a service', says more.)",
    ]
    return "\n".join(lines)

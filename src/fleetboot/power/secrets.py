"""BMC passwords at rest: Fernet tokens in the database, the key in a file only the
service can read (created 0600, refused when others may read it).

A database dump alone gives nobody a BMC password; the key file alone holds no
password. The clear text exists only in memory, inside a ``Credentials``.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

from fleetboot.power.core import ConfigError

KEY_FILE_NAME = "power.key"
KEY_ENV = "FLEETBOOT_POWER_KEY"


def key_path(state_dir: str | os.PathLike[str]) -> Path:
    """``$FLEETBOOT_POWER_KEY``, else ``<state_dir>/power.key``."""
    override = os.environ.get(KEY_ENV)
    return Path(override) if override else Path(state_dir) / KEY_FILE_NAME


class SecretBox:
    """Encrypts and decrypts BMC passwords with the service's key file."""

    def __init__(self, path: Path, *, create: bool = True) -> None:
        self.path = path
        self._fernet = Fernet(self._load(create))

    def _load(self, create: bool) -> bytes:
        try:
            mode = self.path.stat().st_mode
        except FileNotFoundError:
            if not create:
                raise ConfigError(f"the power key file {self.path} does not exist; BMC "
                                  "passwords stored with another key cannot be read: set "
                                  "them again with `fleetboot power set`") from None
            return self._create()
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ConfigError(f"the power key file {self.path} may be read by other users "
                              f"(mode {stat.S_IMODE(mode):o}); run `chmod 600 {self.path}`")
        return self.path.read_bytes().strip()

    def _create(self) -> bytes:
        key = Fernet.generate_key()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # O_EXCL: two commands racing to create it must not end with two keys.
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return self.path.read_bytes().strip()
        with os.fdopen(fd, "wb") as f:
            f.write(key + b"\n")
        return key

    def seal(self, password: str) -> str:
        return self._fernet.encrypt(password.encode()).decode("ascii")

    def open(self, token: str) -> str:
        try:
            return self._fernet.decrypt(token.encode("ascii")).decode()
        except InvalidToken:
            raise ConfigError(f"a stored BMC password does not match the key file {self.path} "
                              "(was the key replaced?); set the password again with "
                              "`fleetboot power set`") from None

"""A throw-away PostgreSQL server from Debian's packages, for tests and benchmarks.

It runs as the ``postgres`` system user in a temporary data directory on a
unix socket only (no TCP port, so parallel workers never collide).
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass


def _pg_bin() -> str | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return os.path.dirname(found[-1]) if found else None


def available() -> bool:
    return _pg_bin() is not None and os.geteuid() == 0


@dataclass
class PostgresServer:
    datadir: str
    sockdir: str
    bindir: str

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@/postgres?host={self.sockdir}"

    def create_database(self, name: str) -> str:
        self._psql(f'CREATE DATABASE "{name}"')
        return f"postgresql+psycopg://postgres@/{name}?host={self.sockdir}"

    def drop_database(self, name: str) -> None:
        self._psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def _psql(self, sql: str) -> None:
        subprocess.run(
            ["runuser", "-u", "postgres", "--", f"{self.bindir}/psql", "-h", self.sockdir,
             "-d", "postgres", "-v", "ON_ERROR_STOP=1", "-qc", sql],
            check=True, capture_output=True,
        )

    @classmethod
    def start(cls) -> PostgresServer:
        bindir = _pg_bin()
        if bindir is None:
            raise RuntimeError("PostgreSQL is not installed: run scripts/install-system-deps.sh")
        root = tempfile.mkdtemp(prefix="fb-pg-")
        datadir, sockdir = f"{root}/data", f"{root}/sock"
        os.makedirs(sockdir)
        shutil.chown(root, "postgres")
        shutil.chown(sockdir, "postgres")
        as_pg = ["runuser", "-u", "postgres", "--"]
        subprocess.run([*as_pg, f"{bindir}/initdb", "-D", datadir, "-A", "trust", "-U",
                        "postgres", "--no-sync"], check=True, capture_output=True)
        subprocess.run(
            [*as_pg, f"{bindir}/pg_ctl", "-D", datadir, "-w", "-l", f"{root}/log", "-o",
             f"-k {sockdir} -c listen_addresses='' -c fsync=off -c max_connections=200",
             "start"],
            check=True, capture_output=True,
        )
        server = cls(datadir, sockdir, bindir)
        for _ in range(50):
            if os.path.exists(f"{sockdir}/.s.PGSQL.5432"):
                break
            time.sleep(0.1)
        return server

    def stop(self) -> None:
        subprocess.run(["runuser", "-u", "postgres", "--", f"{self.bindir}/pg_ctl", "-D",
                        self.datadir, "-m", "immediate", "stop"], check=False, capture_output=True)
        shutil.rmtree(os.path.dirname(self.datadir), ignore_errors=True)

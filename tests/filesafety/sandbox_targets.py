"""Functions the sandbox tests run in a child process (they must be importable there)."""

from __future__ import annotations

import os
import time


def sleep_forever() -> None:
    time.sleep(3600)


def die() -> None:
    os._exit(9)


def fail() -> None:
    raise ValueError("broken on purpose\nsecond line")


def write(path: str) -> dict:
    descriptor = os.open(path, os.O_CREAT | os.O_WRONLY)
    try:
        os.write(descriptor, b"x" * 100)
        error = None
    except OSError as exc:
        error = exc.errno
    finally:
        os.close(descriptor)
    return {"error": error, "cwd": os.getcwd(), "proxy": os.environ.get("HTTPS_PROXY")}


def litter_and_hang(count: int) -> None:
    """Fill the working folder with empty files (slow to remove), then never return."""
    litter(count)
    time.sleep(3600)


def litter(count: int) -> str:
    """Fill the working folder with empty files, so that removing it takes a while."""
    os.mkdir("sub")
    for index in range(count):
        open(os.path.join("sub", f"{index}.txt"), "w").close()
    return os.getcwd()

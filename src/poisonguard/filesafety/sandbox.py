"""The second wall: run a function in a separate, killable process with a timeout and resource limits.

The static checks decide what is loaded; this limits the damage of what they might miss. The
child is a fresh interpreter (`multiprocessing` spawn, so nothing of the parent's state is
inherited), starts in an empty temporary folder, gets an environment without proxy settings,
and, where `resource` exists, limits on CPU seconds, the size of any file it writes (a file
it creates stays empty) and A timeout, a crash or Ctrl-C kills it.

What it does NOT do: no seccomp filter, no network namespace, no filesystem namespace. The
child can still read what the user can read, create empty files, delete or rename the user's
files and open sockets. The child's
answer comes back as JSON bytes (never a pickle: a compromised child must not get to run code
in the parent by what it sends back).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import tempfile
from typing import Any, Callable

_PROXY_VARS = ("http_proxy", "https_proxy", "ftp_proxy", "all_proxy", "no_proxy")
_DEFAULT_FILE_BYTES = 0  # the child may create files but not put a byte in them


class SandboxError(RuntimeError):
    """The isolated call did not return: it timed out, crashed or was killed."""


def _limit_resources(cpu_seconds: int | None, file_bytes: int) -> None:
    try:
        import resource
    except ImportError:  # not on this platform: the timeout still holds
        return
    limits = [(resource.RLIMIT_FSIZE, file_bytes)]
    if cpu_seconds is not None:
        limits.append((resource.RLIMIT_CPU, cpu_seconds))
    for which, value in limits:
        try:
            resource.setrlimit(which, (value, value))
        except (ValueError, OSError):  # a hard limit below ours: keep the stricter one
            continue


def _child(conn, cwd: str, fn: Callable[..., Any], args: tuple, cpu_seconds: int | None, file_bytes: int) -> None:
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)
    if hasattr(signal, "SIGXFSZ"):  # a write past the file-size limit fails (EFBIG) instead of killing the child
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    for name in list(os.environ):
        if name.lower() in _PROXY_VARS:
            del os.environ[name]
    os.chdir(cwd)
    # tempfile probes a folder by writing to it, which the file-size limit forbids: without this,
    # `import torch._dynamo` (reached by torch.export.load) failed, and no .pt2 trial ever ran
    tempfile.tempdir = cwd
    _limit_resources(cpu_seconds, file_bytes)
    try:
        answer = {"ok": True, "value": fn(*args)}
    except BaseException as exc:  # report any failure as data; the parent decides
        answer = {"ok": False, "error": f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ''}"}
    try:
        conn.send_bytes(json.dumps(answer, default=str).encode())
    except (OSError, ValueError):
        pass


def run_isolated(fn: Callable[..., Any], *args: Any, timeout: float = 60.0, cpu_seconds: int | None = None,
                 file_bytes: int = _DEFAULT_FILE_BYTES) -> Any:
    """`fn(*args)` in a fresh child process; its JSON-able return value, or an exception.

    `fn` must be importable (a module-level function) and return JSON-able data. Raises
    `SandboxError` on timeout, crash or interruption (after killing the child) and
    `RuntimeError` with the child's one-line error when `fn` raised.
    """
    if timeout <= 0:
        raise ValueError("timeout must be positive")
    # The parent owns the child's working folder and removes it once the child is gone: the
    # child is killed as soon as its answer arrives, so a folder it cleaned up itself would be
    # left behind whenever the kill came first.
    with tempfile.TemporaryDirectory(prefix="poisonguard-sandbox-", ignore_cleanup_errors=True) as cwd:
        return _run_in(cwd, fn, args, timeout, cpu_seconds, file_bytes)


def _run_in(cwd: str, fn: Callable[..., Any], args: tuple, timeout: float, cpu_seconds: int | None,
            file_bytes: int) -> Any:
    context = multiprocessing.get_context("spawn")
    receive, send = context.Pipe(duplex=False)
    process = context.Process(target=_child, args=(send, cwd, fn, args, cpu_seconds, file_bytes), daemon=True)
    process.start()
    send.close()
    try:
        if not receive.poll(timeout):
            raise SandboxError(f"did not finish within {timeout:g} s (killed)")
        try:
            answer = json.loads(receive.recv_bytes(1 << 20).decode())
        except (EOFError, OSError, ValueError, UnicodeDecodeError):
            process.join(5)
            raise SandboxError(f"the isolated process died without an answer (exit code {process.exitcode})") from None
    except KeyboardInterrupt:
        raise
    finally:
        if process.is_alive():
            process.kill()
        process.join(5)
        receive.close()
    if not isinstance(answer, dict) or "ok" not in answer:
        raise SandboxError("the isolated process sent a malformed answer")
    if not answer["ok"]:
        raise RuntimeError(str(answer.get("error", "unknown error")))
    return answer.get("value")


def trial_load(path: str, fmt: str, input_shape: list[int] | None = None) -> list[str]:
    """In the child: load a code-carrying model, check its graphs, run one probe forward; findings."""
    import torch

    torch.set_num_threads(1)
    if fmt == "torchscript":
        from poisonguard.filesafety.torchscript import check_loaded_torchscript

        module = torch.jit.load(path, map_location="cpu")
        findings = check_loaded_torchscript(module)
        if findings or input_shape is None:
            return findings
        with torch.no_grad():
            module.eval()(torch.rand(1, *input_shape))
        return []
    if fmt == "torch.export":
        program = torch.export.load(path)
        module = program.module()
        args, kwargs = program.example_inputs or ((), {})
        fits = len(args) == 1 and isinstance(args[0], torch.Tensor) and list(args[0].shape[1:]) == list(input_shape or [])
        if input_shape is not None and not fits:  # the exporter's own inputs keep a batch size it fixed
            args, kwargs = (torch.rand(1, *input_shape),), {}
        with torch.no_grad():
            module(*args, **kwargs)
        return []
    return []

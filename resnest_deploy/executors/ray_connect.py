"""Joining a Ray cluster, and Ray's failures as one line.

A cluster address that accepts no connection is refused in seconds (``ray.init`` retries for
minutes); whatever Ray prints while connecting or running goes to stderr, so stdout stays one JSON
document with ``--json``; Ray Data is set to keep the images' order, stop a stalled job, and leave
progress to the driver. A job's failure reaches the user as our own error raised on the node, or as
one line saying what happened and what to do, never as Ray's traceback.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import sys
from collections.abc import Iterator
from typing import Any

from resnest_deploy.errors import ResnestDeployError, first_line
from resnest_deploy.executors import ClusterError

#: names ``ray_address`` (the CLI: ``--ray``); ``ray start`` is Ray's own command line
_START_ONE = "start one with `ray start --head` or give its address ({ray_address=HOST:6379}, or RAY_ADDRESS)"


def connect(ray: Any, address: str) -> bool:
    """Join the cluster at ``address`` unless this process already has; True when this call
    joined (and so the caller shuts the connection down again)."""
    if ray.is_initialized():
        return False
    check_reachable(address)
    try:
        with quiet_stdout():
            ray.init(
                address=address,
                log_to_driver=False,
                logging_level=logging.WARNING,
                include_dashboard=False,
            )
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise ClusterError(
            f"cannot reach a Ray cluster at {address!r} ({first_line(e)}); {_START_ONE}", param="ray_address"
        ) from None
    return True


def configure(ray: Any, stall_timeout_s: float) -> None:
    """Ray Data for our jobs: results in the images' order, no progress bars of its own (the driver
    reports progress on stderr), a job with no progress for ``stall_timeout_s`` stopped, and an
    actor's error handed back as it was raised."""
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True
    ctx.enable_progress_bars = False
    ctx.execution_no_progress_timeout_s = stall_timeout_s
    ctx.log_internal_stack_trace = False
    # an actor's own error (ArtifactError: the engine cannot open on that node) reaches the driver
    # as itself, not as Ray Data's UserCodeException, whose cause does not survive pickling
    ctx.raise_original_map_exception = True
    logging.getLogger("ray").setLevel(logging.WARNING)
    logging.getLogger("ray.data").setLevel(logging.WARNING)


def check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """A HOST:PORT that accepts no connection is refused in seconds; ``auto`` is left to Ray,
    which answers at once when no cluster runs here."""
    text = address.removeprefix("ray://")
    host, sep, port = text.rpartition(":")
    if address == "auto" or not sep or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as e:
        raise ClusterError(
            f"cannot reach a Ray cluster at {address!r} ({e.strerror or e}); {_START_ONE}",
            param="ray_address",
        ) from None


def user_error(exc: BaseException) -> ResnestDeployError | None:
    """Our own error inside Ray's wrappers (a task error, a user-code exception), if there is one."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, ResnestDeployError):
            return e
        todo += [getattr(e, "cause", None), e.__cause__, e.__context__]
    return None


@contextlib.contextmanager
def one_line_errors() -> Iterator[None]:
    """Ray's failures as one line: our own error as it was raised on the node, anything else
    (a lost node Ray could not recover from, a stalled job) as what happened and what to do."""
    try:
        with quiet_stdout():
            yield
    except ResnestDeployError:
        raise
    except Exception as e:
        ours = user_error(e)
        if ours is not None:
            raise ClusterError(ours.template, param=ours.params) from None  # the CLI names its flags
        raise ClusterError(
            f"the Ray job failed ({type(e).__name__}: {first_line(e)}); no result was kept: "
            "check the cluster (`ray status`) and run it again"
        ) from None


@contextlib.contextmanager
def quiet_stdout() -> Iterator[None]:
    """Whatever Ray prints while connecting or running goes to stderr: stdout stays the command's,
    one JSON document with --json."""
    with contextlib.redirect_stdout(sys.stderr):
        yield

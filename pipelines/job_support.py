"""What the three jobs (restore, evaluate, fine-tune) share around their own work: `ConfigError` for a
configuration that cannot run, `config_errors` that turns a check's ValueError into one, and
`ray_started` that starts local Ray (or joins the cluster of `ray job submit`) and stops what it started."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import ray


class ConfigError(ValueError):
    """The job cannot start: bad arguments, missing weights or unreachable storage. Raised before Ray
    starts; the message says what to fix."""


@contextlib.contextmanager
def config_errors() -> Iterator[None]:
    """Around a job's checks: a ValueError they raise leaves as a ConfigError with the same message."""
    try:
        yield
    except ConfigError:
        raise
    except ValueError as e:
        raise ConfigError(str(e)) from e


@contextlib.contextmanager
def ray_started() -> Iterator[None]:
    """Ray for the block: `ray.init()` (local Ray, or the cluster of `ray job submit`: RAY_ADDRESS)
    unless this process is connected already, and `ray.shutdown()` after only if it was started here."""
    started = not ray.is_initialized()
    if started:
        ray.init()
    try:
        yield
    finally:
        if started:
            ray.shutdown()

"""Library errors name parameters (``p99_ms``); a command names its options (``--p99-ms``)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping

from resnest_deploy.errors import ParameterError


@contextlib.contextmanager
def named_as_flags(flags: Mapping[str, str] | None = None) -> Iterator[None]:
    """A :class:`ParameterError` raised inside, re-raised naming each parameter by its option:
    ``flags`` where it names one (parameter -> option), else ``--`` and the name with ``-``."""
    try:
        yield
    except ParameterError as e:
        raise e.as_flags(flags) from None

"""Errors the core raises and the integration layer shares."""


class UpstreamMismatchError(RuntimeError):
    """The installed upstream package (torch, TRL, transformers, verl) is not the one the code was written for.

    A ``RuntimeError``, not an ``ImportError``: code that treats a missing optional package as "skip" must not
    treat an unsupported version the same way.
    """

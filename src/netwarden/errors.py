"""The few exceptions netwarden raises for expected conditions.

Each carries what the user needs to fix it and the exit status the CLI uses:
2 for bad usage or configuration, 3 for something this machine lacks, 1 for a runtime failure.
The CLI prints ``str(exc)`` as one line; no traceback reaches the user.
"""

from __future__ import annotations


class NetwardenError(Exception):
    """Base class. ``exit_code`` is the process exit status the CLI uses."""

    exit_code = 1


class UsageError(NetwardenError):
    """A bad flag value, a bad filter expression, an unknown interface: exit 2.

    ``option`` names the flag or config key, ``value`` what was given, ``allowed`` what is.
    """

    exit_code = 2

    def __init__(
        self, message: str, *, option: str | None = None, value: object = None, allowed: str = ""
    ) -> None:
        self.option = option
        self.value = value
        self.allowed = allowed
        text = message
        if option is not None:
            text = f"{option} {value!r}: {message}"
        if allowed:
            text += f" (allowed: {allowed})"
        super().__init__(text)


class ConfigError(UsageError):
    """A config file that does not parse or holds a bad key or value: exit 2."""


class MissingCapability(NetwardenError):
    """This machine or user lacks something needed (a privilege, a library, a kernel feature).

    ``what`` says what is missing, ``fix`` how to get it: exit 3.
    """

    exit_code = 3

    def __init__(self, what: str, fix: str = "") -> None:
        self.what = what
        self.fix = fix
        super().__init__(f"{what}; {fix}" if fix else what)


class RuntimeFailure(NetwardenError):
    """Something failed at run time that is not the user's input: exit 1."""

    exit_code = 1

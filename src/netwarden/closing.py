"""``with resource:`` for netwarden's resources (sockets, rings, files, kernel objects).

A class that inherits :class:`Closing` and defines ``close()`` is its own context manager:
``__enter__`` returns it, ``__exit__`` closes it, also when the block raised.
"""

from __future__ import annotations

from typing import Self


class Closing:
    __slots__ = ()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        raise NotImplementedError

"""The error tree. Every error says where: a source name, or a file and line.

Imports nothing from the package; everything may import it.
"""

from __future__ import annotations


class FeedsError(Exception):
    """Root of every error `feeds` raises on purpose."""


class ConfigError(FeedsError):
    """A configuration file is invalid; `problems` holds every `file:line: path: message`."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems

    def __reduce__(self) -> tuple[type[ConfigError], tuple[list[str]]]:
        return type(self), (self.problems,)


class SourceError(FeedsError):
    """Something went wrong with one source; the message starts with its name."""

    def __init__(self, source: str, message: str) -> None:
        super().__init__(f"source={source}: {message}")
        self.source = source
        self.message = message

    def __reduce__(self) -> tuple[type[SourceError], tuple[str, str]]:
        # Errors cross process boundaries (parsing runs in worker processes): rebuild from both parts.
        return type(self), (self.source, self.message)


class ParseError(SourceError):
    """The body is not a feed we can read."""


class StoreError(FeedsError):
    """The store cannot be opened, migrated or written; the message names the path."""


class PublishError(FeedsError):
    """An output could not be written; the message names the path."""

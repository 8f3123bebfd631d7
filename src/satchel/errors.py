"""Typed errors. Library code raises these; only the CLI entry point prints them.

Every error carries a one-line message written as a lowercase phrase that reads well after
"FATAL:   ", and optionally a hint shown on a second line. Wrap with context using `context()`:

    raise SIFError("descriptor 3 extends past end of file")
    ...
    except SatchelError as err:
        raise err.context("while loading image.sif")

which reads "while loading image.sif: descriptor 3 extends past end of file".
"""

from __future__ import annotations


class SatchelError(Exception):
    """Base of every error a user may see as a FATAL line."""

    def __init__(self, message: str, hint: str | None = None, *, in_context: bool = False):
        super().__init__(message)
        self.message = message
        self.hint = hint
        # the message already says what it is about (it starts with the image reference it
        # concerns, or context() added a prefix): in_context_of() then adds nothing
        self.in_context = in_context

    def __str__(self) -> str:
        return self.message

    def context(self, prefix: str) -> "SatchelError":
        """Return a copy of this error whose message starts with `prefix: `."""
        new = type(self).__new__(type(self))
        SatchelError.__init__(new, f"{prefix}: {self.message}", self.hint, in_context=True)
        return new

    def in_context_of(self, prefix: str) -> "SatchelError":
        """This error with `prefix: ` in front, unless its message already names its subject
        (in_context): an operation is named once, not twice."""
        return self if self.in_context else self.context(prefix)


class UsageError(SatchelError):
    """Bad command line: unknown option, missing argument."""


class ConfigError(SatchelError):
    """Bad admin or user configuration."""


class ImageError(SatchelError):
    """An image cannot be found, opened or understood."""


class SIFError(ImageError):
    """A SIF file is malformed or an operation on it is invalid."""


class DefinitionError(SatchelError):
    """A definition file cannot be parsed or is inconsistent."""


class BuildError(SatchelError):
    """A build step failed."""


class ContainerError(SatchelError):
    """Container setup failed (namespaces, mounts, exec)."""


class PathError(SatchelError):
    """A path inside a root (an image, a rootfs, the staged container) cannot be resolved:
    a symbolic link loop, a component that is not a directory, '..' after a missing
    component, an entry that cannot be opened. `errno` says which (ELOOP, ENOTDIR, ENOENT,
    or the errno of the failed open). Raised by fsutil's one resolver only."""

    def __init__(self, message: str, errno: int, hint: str | None = None):
        super().__init__(message, hint)
        self.errno = errno

    def context(self, prefix: str) -> "PathError":
        new = super().context(prefix)
        new.errno = self.errno
        return new


class OCIError(SatchelError):
    """An OCI/Docker image or registry operation failed."""


class CacheError(SatchelError):
    """The image/blob cache is unusable."""


class InstanceError(SatchelError):
    """An instance cannot be started, found or stopped."""


class TrustError(SatchelError):
    """Signing or verifying an image failed, a key is unusable, or the ECL refuses an image."""


def os_error(what: str, err: OSError, cls: type[SatchelError] = SatchelError) -> SatchelError:
    """Turn an OSError into a typed error naming the operation: 'what: strerror'."""
    reason = err.strerror or str(err)
    return cls(f"{what}: {reason}")

"""The exception tree. Every error a user can cause is a FarcError; the CLI prints its
message on one line and exits non-zero, so no traceback ever reaches a user."""


class FarcError(Exception):
    """Base class of every error farc raises on purpose."""


class ConfigError(FarcError):
    """A bad target file, option or model configuration."""


class CheckpointError(FarcError):
    """A missing, truncated, tampered or wrong-kind checkpoint or state dict."""


class DataError(FarcError):
    """A dataset that cannot be read or has the wrong shape."""


class PassError(FarcError):
    """A compiler pass met IR it cannot handle, or the target is too small."""


class ProgramError(FarcError):
    """A tile program that is malformed, truncated, corrupt or of the wrong version."""


class EmulatorError(FarcError):
    """The emulator was asked to do something the program or target forbids."""


class OutputError(FarcError, OSError):
    """An output file that cannot be written (a read-only folder, a full disk); names the
    user's path, never the temp file. Also an OSError, for callers that catch those."""

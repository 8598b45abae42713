"""The exceptions a user of sinagot may catch.

Each message names the file, key, record or step at fault and what was found, so that the
CLI and the daemon can print it as it is, without a traceback.
"""


class SinagotError(Exception):
    """Base of every error sinagot raises on purpose."""


class ConfigError(SinagotError):
    """The workspace configuration (or a script it names) cannot be used as it is."""


class ScriptError(SinagotError):
    """A step's script cannot be loaded: missing, syntax error, no `Script` class, bad patterns."""


class RecordIdError(SinagotError, ValueError):
    """A record ID does not match `id_pattern`, or could reach outside the data folder."""

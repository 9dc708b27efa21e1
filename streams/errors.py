"""The project's exception hierarchy: one base, one line of docstring each."""


class BanditStreamError(Exception):
    """Base class of every error this project raises on purpose."""


class ConfigurationError(BanditStreamError):
    """A setting or a definition is invalid; the message says which and how to fix it."""


class ServiceError(BanditStreamError):
    """A local service (Kafka, Postgres) could not be installed, started or reached."""


class MigrationError(BanditStreamError):
    """A SQL migration failed; nothing of it was applied."""


class ExperimentError(BanditStreamError):
    """An experiment definition or a change of its status was refused."""

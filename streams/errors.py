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


class TransientError(BanditStreamError):
    """The infrastructure is not there now (database, broker): wait and try again later."""


class InvalidInput(BanditStreamError):
    """This input is wrong and will stay wrong: refuse it (dead-letter topic), never retry."""


def is_transient(exc: BaseException) -> bool:
    """Whether `exc` says "try again later" (an outage) rather than "this will not work".

    Database or broker unreachable, a connection lost, a serialization failure, a deadlock,
    a timeout: the same batch can succeed later. Anything else is treated as permanent.
    """
    import socket

    import asyncpg
    from aiokafka import errors as kafka_errors

    transient_pg = (
        asyncpg.PostgresConnectionError,
        asyncpg.InterfaceError,
        asyncpg.exceptions.SerializationError,
        asyncpg.exceptions.DeadlockDetectedError,
        asyncpg.exceptions.TooManyConnectionsError,
        asyncpg.exceptions.CannotConnectNowError,
        asyncpg.exceptions.OperatorInterventionError,
        asyncpg.exceptions.InsufficientResourcesError,
        asyncpg.exceptions.LockNotAvailableError,
        # "cannot switch to state …; another operation is in progress": a connection that
        # broke mid-statement, seen when the database goes away
        asyncpg.exceptions.InternalClientError,
    )
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, (TransientError, ConnectionError, TimeoutError, *transient_pg)):
            return True
        if isinstance(current, kafka_errors.KafkaError) and (
            getattr(current, "retriable", False)
            or isinstance(
                current, kafka_errors.KafkaConnectionError | kafka_errors.KafkaTimeoutError
            )
        ):
            return True
        if isinstance(current, socket.gaierror):  # a name that does not resolve, for now
            return True
        current = current.__cause__
    return False

"""Every error the engine raises on purpose.

One base class; the docstring is the default message; ``code`` is stable and is
what the API returns. The API and the UI translate these in one place each.
"""

from __future__ import annotations


class CuratoreError(Exception):
    """Something went wrong in Curatore."""

    code = "error"
    http_status = 400
    retryable = False  # may an automatic retry help? (deliberate errors are usually permanent)

    def __init__(self, message: str | None = None, **details: object) -> None:
        self.message = message or (self.__doc__ or "").strip()
        self.details = details
        super().__init__(self.message)


class NotFound(CuratoreError):
    """Not found."""

    code = "not_found"
    http_status = 404


class RunNotFound(NotFound):
    """No such run."""

    code = "run_not_found"


class UnknownRunType(CuratoreError):
    """Unknown run type."""

    code = "unknown_run_type"


class InvalidConfig(CuratoreError):
    """The job's configuration is not valid."""

    code = "invalid_config"
    http_status = 422


class InvalidTransition(CuratoreError):
    """That status change is not allowed."""

    code = "invalid_transition"
    http_status = 409


class NotCapable(CuratoreError):
    """This job type does not allow that action."""

    code = "not_capable"
    http_status = 409


class AssetError(CuratoreError):
    """The file could not be stored."""

    code = "asset_error"


class BrokerUnavailable(CuratoreError):
    """The message broker could not be reached."""

    code = "broker_unavailable"
    http_status = 503
    retryable = True


class DatabaseUnavailable(CuratoreError):
    """The database could not be reached."""

    code = "database_unavailable"
    http_status = 503
    retryable = True


class DatabaseNotMigrated(CuratoreError):
    """The database schema is missing or old: run `curatore migrate`."""

    code = "database_not_migrated"
    http_status = 503


class JobFailed(CuratoreError):
    """The job failed."""

    code = "job_failed"


class DuplicateRun(CuratoreError):
    """The same job is already queued or running for this resource."""

    code = "duplicate_run"
    http_status = 409


class RateLimited(CuratoreError):
    """Too many requests; try again shortly."""

    code = "rate_limited"
    http_status = 429


class JobCancelled(CuratoreError):
    """The run was cancelled."""

    code = "cancelled"


class JobHandedBack(JobCancelled):
    """Its worker is stopping: the run goes back to the queue for another worker (not cancelled)."""

    code = "handed_back"


class LeaseLost(JobCancelled):
    """This process no longer holds the run's current dispatch (it was re-queued or ended elsewhere)."""

    code = "lease_lost"


class UnsupportedFile(JobFailed):
    """The file's format is not supported or its content does not match its name."""

    code = "unsupported_file"


class InvalidSettings(CuratoreError):
    """A setting is not valid."""

    code = "invalid_settings"
    http_status = 500

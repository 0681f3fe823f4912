"""The ``curatore`` command."""

from __future__ import annotations

import json
import os
import re
import sys
import time
import uuid
from typing import Any

import click
from pydantic import ValidationError

from backend import actions
from backend.auth.access import Principal
from backend.auth.orgs import check_slug, ensure_org, get_org, refuse_members
from backend.auth.users import get_user, memberships
from backend.config import get_settings
from backend.db.engine import in_transaction
from backend.db.migrate import upgrade
from backend.db.models import ApiToken, User
from backend.db.states import RunStatus
from backend.db.types import utcnow
from backend.devserver import run_dev, run_serve
from backend.errors import CuratoreError, DatabaseUnavailable, NotFound
from backend.jobtypes.registry import get_registry
from backend.queues.workers import ONLINE_WITHIN, database_ok
from backend.queues.workers import alive as worker_alive
from backend.runs.queries import RunFilter, get_logs, get_run, list_runs, log_dict, run_dict
from backend.storage.assets import store_local_file
from backend.validation import MAX_CONFIG_BYTES, MAX_NAME, check_input, check_text, parse_json

# What must not reach a terminal raw: C0 and C1 controls (ESC sequences, BEL, carriage returns that overwrite a
# line) and the bidi controls that make text read otherwise than it is stored (U+202E...).
UNSAFE_FOR_TERMINAL = re.compile(r"[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def shown(text: object, *, multiline: bool = False) -> str:
    """Stored text (names, messages, errors: anyone who can submit wrote them) as it may be printed: unsafe
    characters written as ``\\xNN`` / ``\\uXXXX``; newlines kept only where ``multiline`` (a traceback)."""
    def escaped(m: re.Match[str]) -> str:
        char = m.group()
        if multiline and char in "\n\t":
            return char
        return f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}"

    return UNSAFE_FOR_TERMINAL.sub(escaped, str(text))


def settings_error(exc: ValidationError) -> str:
    """A settings variable that does not validate, in one line naming the variables (never their values)."""
    problems = "; ".join(f"CURATORE_{'.'.join(map(str, e['loc'])).upper()}: {e['msg']}"
                         for e in exc.errors(include_url=False, include_input=False, include_context=False))
    return f"invalid settings: {problems}"


class CuratoreGroup(click.Group):
    """Turns the engine's errors, and settings that do not validate, into one clear line and exit status 2,
    never a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except CuratoreError as exc:
            self.exit_in_one_line(exc.message)
        except ValidationError as exc:
            if exc.title != "Settings":
                raise
            self.exit_in_one_line(settings_error(exc))

    @staticmethod
    def exit_in_one_line(message: str) -> None:
        one_line = " ".join(message.split())  # a driver's message may span lines (psycopg's does)
        click.secho(f"error: {shown(one_line)}", fg="red", err=True)
        sys.exit(2)


@click.group(cls=CuratoreGroup)
def main() -> None:
    """Curatore Jobs: tracked background runs with a live admin UI."""
    os.umask(0o077)  # whatever this process and its children create (databases, assets, logs) is private
    get_settings()  # settings that do not validate (a short secret in prod) stop every command, in one line


@main.command()
def migrate() -> None:
    """Create or upgrade the database schema."""
    from sqlalchemy.exc import OperationalError


    try:
        upgrade()
    except OperationalError as exc:  # alembic connects outside backend.db.engine, which translates this elsewhere
        if "connect" not in str(exc.orig).lower():
            raise
        raise DatabaseUnavailable(f"The database could not be reached: {exc.orig}") from None
    click.echo(f"database is up to date ({_safe_url(get_settings().database_url)})")


@main.command()
@click.option("--port", default=3000, show_default=True, help="Port of the web app.")
@click.option("--backend-port", default=8000, show_default=True, help="Port of the Reflex backend.")
@click.option("--no-ui", is_flag=True, help="Run the worker and scheduler only.")
@click.option("--reload", is_flag=True, help="Reflex dev mode: hot reload, backend on --backend-port.")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address the web app listens on (0.0.0.0 to reach it from other machines).")
def dev(port: int, backend_port: int, no_ui: bool, reload: bool, host: str) -> None:
    """Everything in one process group on this machine: web app, worker, scheduler. Ctrl-C stops all."""
    sys.exit(run_dev(port=port, backend_port=backend_port, ui=not no_ui, reload=reload, host=host))


@main.command()
@click.option("--port", default=3000, show_default=True, help="Port of the web app (UI, websocket and API).")
@click.option("--host", default="0.0.0.0", show_default=True, help="Address to listen on.")
@click.option("--workers", default=None, type=int,
              help="Backend processes on this machine (default: 2 per CPU + 1 with Redis, 1 without).")
@click.option("--backend-only", is_flag=True, help="Serve the websocket and API only (a proxy serves the build).")
def serve(port: int, host: str, workers: int | None, backend_only: bool) -> None:
    """Run the web app for production: several backend processes share clients through Redis (docs/deploy.md)."""
    try:
        run_serve(port, host, workers, backend_only)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None


@main.command()
@click.option("--queues", "-Q", default=None, help="Comma-separated queues (default: all).")
@click.option("--concurrency", "-c", default=None, type=int, help="Worker processes.")
@click.option("--loglevel", "-l", default="info", show_default=True)
@click.option("--name", "-n", default=None, help="Worker node name.")
def worker(queues: str | None, concurrency: int | None, loglevel: str, name: str | None) -> None:
    """Run a Celery worker."""
    from backend.worker.celery_app import celery_app  # builds the worker's app from the settings main() checked

    celery_app.worker_main(_worker_argv(queues, concurrency, loglevel, name))


def _worker_argv(queues: str | None, concurrency: int | None, loglevel: str, name: str | None) -> list[str]:

    # No gossip or mingle: workers know of each other through the database (worker_heartbeats), and Celery's
    # gossip channel, closed on a dead Redis connection, logged an AttributeError traceback on every outage
    # (celery 5.7: ConsumerStep._close hands kombu's ignore_errors the consumer's connection, already None).
    argv = ["worker", "--loglevel", loglevel, "-Q", queues or ",".join(get_registry().celery_queues()),
            "--without-gossip", "--without-mingle"]
    if concurrency:
        argv += ["--concurrency", str(concurrency)]
    if name:
        argv += ["-n", name]
    return argv


@main.command()
@click.option("--loglevel", "-l", default="info", show_default=True)
def scheduler(loglevel: str) -> None:
    """Run the scheduler (Celery beat)."""
    from backend.worker.celery_app import celery_app  # builds the worker's app from the settings main() checked

    settings = get_settings()
    settings.ensure_dirs()
    celery_app.start(["beat", "--loglevel", loglevel, "--schedule", str(settings.data_dir / "beat-schedule")])


@main.command()
@click.option("--worker", "worker_name", default=None, metavar="NODE",
              help="Also require this worker node (name@host, as `curatore worker -n` names it) to be alive.")
def health(worker_name: str | None) -> None:
    """Liveness: exit 0 when the database answers (and the worker reported lately), 1 otherwise."""
    try:
        database_ok()
    except DatabaseUnavailable as exc:
        click.echo(f"unhealthy: {exc.message}", err=True)
        sys.exit(1)
    if worker_name and not worker_alive(worker_name):
        click.echo(f"unhealthy: worker {worker_name} has not reported in the last "
                   f"{int(ONLINE_WITHIN.total_seconds())} s", err=True)
        sys.exit(1)
    click.echo("healthy" + (f": database and worker {worker_name}" if worker_name else ": database"))


@main.command()
@click.argument("run_type")
@click.option("--config", "config_json", default="{}", help="The job's config as JSON.")
@click.option("--org", "org_slug", default=None, help="Organization slug (default: the demo organization).")
@click.option("--priority", type=click.IntRange(0, 4), default=None)
@click.option("--name", "display_name", default=None, help="Display name of the run.")
@click.option("--wait", is_flag=True, help="Follow the run and exit non-zero unless it completes.")
@click.option("--timeout", default=600.0, show_default=True, help="Seconds to wait with --wait.")
@click.option("--as", "as_email", default=None, metavar="EMAIL",
              help="Submit as this user (their role applies; the run is theirs, and their open pages toast it).")
def submit(
    run_type: str, config_json: str, org_slug: str | None, priority: int | None, display_name: str | None,
    wait: bool, timeout: float, as_email: str | None,
) -> None:
    """Submit a run. A local "path" (or "paths") in the config is stored as an asset first."""
    config = parse_json(config_json, "--config")
    if not isinstance(config, dict):
        raise CuratoreError("--config must be a JSON object.")
    if display_name is None and isinstance(config.get("path"), str):  # the file's name, not where it lies here
        display_name = os.path.basename(config["path"].rstrip("/\\"))[-MAX_NAME:] or None
    # Refuse bad input (the checks every path shares) and a bad type or config before storing any file, so a
    # refused submit leaves nothing behind.
    for value, what in ((run_type, "the run type"), (org_slug, "--org"), (display_name, "--name")):
        check_text(value, what, max_length=MAX_NAME)
    check_input(config, "--config", max_bytes=MAX_CONFIG_BYTES)
    get_registry().validate_config(run_type, _store_paths(None, config))
    # The operator on the server is a system admin, under the same rules as everyone: a system run goes to the
    # system organization, a pipeline may not name a system-only stage. With --as, that user's role decides.
    principal = Principal.system("cli") if as_email is None else _principal_of(as_email)
    org = _submit_org(org_slug)
    if as_email is not None:  # checked before any file is stored
        job_type = get_registry().resolve(run_type)
        principal.require_submit(job_type, org.id)
    config = _store_paths(org.id, config)
    run = actions.submit(principal, run_type, config, org.id, priority=priority, display_name=display_name)
    click.echo(str(run.id))
    if wait:
        sys.exit(_follow(run.id, timeout))


def _principal_of(email: str) -> Any:
    """``--as EMAIL``: that user, who must exist and not be disabled."""
    check_text(email, "--as", max_length=MAX_NAME)
    user = get_user(email)
    if user.disabled:
        raise CuratoreError(f"{email} is disabled.")
    return Principal.of(user)


def _submit_org(org_slug: str | None) -> Any:
    """The organization --org names, which must exist (a typo creates nothing); without --org, the default
    organization, created on first use."""
    if org_slug is None:
        return ensure_org(get_settings().default_org_slug)
    check_slug(org_slug)
    try:
        return get_org(org_slug)
    except NotFound:
        raise NotFound(f"No organization {org_slug!r} (create it with: curatore orgs create {org_slug})") from None


def _store_paths(org_id: uuid.UUID | None, config: dict[str, Any]) -> dict[str, Any]:
    """Replace "path"/"paths" by the ids of the stored files (placeholder ids when ``org_id`` is None)."""
    def store(path: object) -> str:
        if not isinstance(path, str) or not path:
            raise CuratoreError(f"A path in --config must be a non-empty string, not {json.dumps(path)}.")
        return str(uuid.UUID(int=0) if org_id is None else store_local_file(org_id, path).id)

    config = dict(config)
    if "path" in config:
        config["asset_id"] = store(config.pop("path"))
    if "paths" in config:
        paths = config.pop("paths")
        if not isinstance(paths, list):
            raise CuratoreError('"paths" in --config must be a list of file paths.')
        config["asset_ids"] = [store(p) for p in paths]
    return config


def _follow(run_id: uuid.UUID, timeout: float) -> int:

    deadline = time.monotonic() + timeout
    after = 0
    while True:
        for event in get_logs(run_id, after_id=after):
            after = event.id or after
            click.echo(f"  {event.created_at:%H:%M:%S} {event.level.value:5} {shown(event.event_type):16} "
                       f"{shown(event.message)}", err=True)
        run = get_run(run_id)
        status = RunStatus(run.status)
        if status.is_terminal:
            color = "green" if status is RunStatus.COMPLETED else "red"
            click.secho(status.value, fg=color)
            if run.error_message:
                click.echo(shown(run.error_message, multiline=True), err=True)
            return 0 if status is RunStatus.COMPLETED else 1
        if time.monotonic() > deadline:
            click.secho(f"still {status.value} after {timeout:.0f} s", fg="yellow", err=True)
            return 3
        time.sleep(0.3)


@main.group()
def runs() -> None:
    """Look at runs."""


@runs.command("list")
@click.option("--org", "org_slug", default=None)
@click.option("--status", "statuses", multiple=True, type=click.Choice([s.value for s in RunStatus]))
@click.option("--type", "run_types", multiple=True)
@click.option("--limit", default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def runs_list(org_slug: str | None, statuses: tuple[str, ...], run_types: tuple[str, ...], limit: int,
              as_json: bool) -> None:
    """The newest runs."""
    for run_type in run_types:  # a typo is an error naming the known types, not an empty list
        get_registry().resolve(run_type)
    flt = RunFilter(
        organization_id=get_org(org_slug).id if org_slug else None,
        statuses=tuple(RunStatus(s) for s in statuses),
        run_types=run_types,
    )
    rows = list_runs(flt, limit=limit)
    if as_json:
        click.echo(json.dumps([run_dict(r) for r in rows], indent=2))
        return
    for r in rows:
        pct = r.progress.get("percent")
        click.echo(f"{r.id}  {r.created_at:%Y-%m-%d %H:%M:%S}  {shown(r.run_type):18} {RunStatus(r.status).value:10} "
                   f"{'' if pct is None else f'{pct:5.1f}%'}  {shown(r.display_name or '')}")


@runs.command("show")
@click.argument("run_id")
@click.option("--json", "as_json", is_flag=True)
def runs_show(run_id: str, as_json: bool) -> None:
    """One run with its activity log."""
    run = get_run(run_id)
    events = get_logs(run.id, limit=10_000)
    if as_json:
        click.echo(json.dumps({"run": run_dict(run), "logs": [log_dict(e) for e in events]}, indent=2))
        return
    click.echo(f"{run.id}  {shown(run.run_type)}  {RunStatus(run.status).value}")
    for key in ("display_name", "queue", "priority", "origin", "created_at", "started_at", "completed_at",
                "error_message"):
        value = getattr(run, key)
        if value is not None:
            click.echo(f"  {key:14} {shown(getattr(value, 'value', value), multiline=key == 'error_message')}")
    click.echo(f"  {'progress':14} {json.dumps(run.progress)}")
    if run.results_summary:
        click.echo(f"  {'results':14} {json.dumps(run.results_summary)}")
    click.echo("log:")
    for e in events:
        click.echo(f"  {e.created_at:%H:%M:%S.%f}"[:-3]
                   + f" {e.level.value:5} {shown(e.event_type):18} {shown(e.message)}")


@main.group()
def orgs() -> None:
    """Organizations."""


@orgs.command("create")
@click.argument("slug")
@click.option("--name", default=None)
def orgs_create(slug: str, name: str | None) -> None:
    """Create an organization (the only way to: the app and the REST API never do). The slug ``system`` is
    reserved."""
    org = ensure_org(slug, name)
    click.echo(f"{org.id}  {org.slug}  {shown(org.name)}")


# --------------------------------------------------------------------------- users and API tokens

ROLE_CHOICE = click.Choice(["viewer", "member", "admin"])


@main.group()
def users() -> None:
    """People who sign in to the app, and their roles in organizations."""


@users.command("create")
@click.argument("email")
@click.option("--password", default=None, help="The password (visible in the process list: prefer --password-stdin).")
@click.option("--password-stdin", is_flag=True, help="Read the password from the first line of standard input.")
@click.option("--name", default="", help="Display name (default: the part of the email before @).")
@click.option("--system-admin", is_flag=True, help="Sees and manages every organization.")
@click.option("--org", "org_slug", default=None, help="Give the user a role in this organization.")
@click.option("--role", type=ROLE_CHOICE, default=None, help="The role in --org (default: member).")
def users_create(email: str, password: str | None, password_stdin: bool, name: str, system_admin: bool,
                 org_slug: str | None, role: str | None) -> None:
    """Add a user. Without --password or --password-stdin, the password is asked for."""
    if password is not None and password_stdin:
        raise CuratoreError("Use either --password or --password-stdin, not both.")
    if role is not None and org_slug is None:
        raise CuratoreError("--role needs --org: the organization the role is in.")
    org = get_org(org_slug) if org_slug else None  # refuse an unknown organization before creating anyone
    if org is not None:
        refuse_members(org.id)  # and the system organization, which has no members
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    elif password is None:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    user = actions.create_user(_operator(), email, password, name=name, system_admin=system_admin,
                               organization_id=org.id if org else None, role=role or "member")
    where = f", {role or 'member'} in {org.slug}" if org else ""
    click.echo(f"{user.id}  {user.email}{'  system admin' if system_admin else ''}{where}")


@users.command("role")
@click.argument("email")
@click.option("--org", "org_slug", required=True, help="The organization.")
@click.option("--role", type=ROLE_CHOICE, required=True)
def users_role(email: str, org_slug: str, role: str) -> None:
    """Set a user's role in an organization (adds the membership if needed)."""
    org = get_org(org_slug)
    actions.set_role(_operator(), email, org.id, role)
    click.echo(f"{shown(email.strip().lower())}  {role} in {org.slug}")


def _operator() -> Any:
    """The CLI on the server acts as a system admin; its account actions are audited as ``cli``."""
    return Principal.system("cli")


@users.command("disable")
@click.argument("email")
def users_disable(email: str) -> None:
    """Refuse the user's sign-ins, end their sessions and revoke their tokens."""
    ended = actions.set_user_disabled(_operator(), email, True)
    click.echo(f"{shown(email)}  disabled ({', '.join(f'{v} {k}' for k, v in ended.items()) or 'nothing to end'})")


@users.command("enable")
@click.argument("email")
def users_enable(email: str) -> None:
    """Let a disabled user sign in again (their old tokens stay revoked)."""
    actions.set_user_disabled(_operator(), email, False)
    click.echo(f"{shown(email)}  enabled")


@users.command("remove")
@click.argument("email")
@click.option("--org", "org_slug", required=True, help="The organization to remove the user from.")
def users_remove(email: str, org_slug: str) -> None:
    """Remove the user's membership (and role) in an organization."""
    actions.remove_membership(_operator(), email, get_org(org_slug).id)
    click.echo(f"{shown(email)}  removed from {shown(org_slug)}")


@users.command("reset-password")
@click.argument("email")
@click.option("--password-stdin", is_flag=True, help="Read the new password from the first line of standard input.")
def users_reset_password(email: str, password_stdin: bool) -> None:
    """Set a user's password (asked for, or read from stdin); their sessions end."""
    password = (sys.stdin.readline().rstrip("\r\n") if password_stdin
                else click.prompt("New password", hide_input=True, confirmation_prompt=True))
    actions.reset_password(_operator(), email, password)
    click.echo(f"{shown(email)}  password reset; their sessions ended")


@users.command("end-sessions")
@click.argument("email")
def users_end_sessions(email: str) -> None:
    """End every session of the user and revoke every token of theirs."""
    ended = actions.end_user_sessions(_operator(), email)
    click.echo(f"{shown(email)}  {', '.join(f'{v} {k}' for k, v in ended.items()) or 'nothing to end'}")


@users.command("list")
@click.option("--json", "as_json", is_flag=True)
def users_list(as_json: bool) -> None:
    """Every user with their roles."""
    from sqlalchemy import select


    people = in_transaction(lambda s: s.execute(select(User).order_by(User.email)).scalars().all())
    rows = [{"id": str(u.id), "email": u.email, "name": u.name, "system_admin": u.is_system_admin,
             "disabled": u.disabled, "roles": {org.slug: role for org, role in memberships(u.id)}} for u in people]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for r in rows:
        flags = "".join(["  system admin" if r["system_admin"] else "", "  disabled" if r["disabled"] else ""])
        roles = ", ".join(f"{slug}:{role}" for slug, role in r["roles"].items()) or "-"
        click.echo(f"{r['email']:32} {roles}{flags}")


@main.group()
def tokens() -> None:
    """API tokens for the REST API (only their hash is stored)."""


@tokens.command("create")
@click.argument("email")
@click.option("--name", required=True, help="What the token is for.")
@click.option("--days", type=click.IntRange(min=1), default=None, help="Expires after this many days (default: never).")
def tokens_create(email: str, name: str, days: int | None) -> None:
    """Create a token for a user and print it, once: it cannot be shown again."""
    token, secret = actions.create_token(_operator(), email, name, days)
    expires = f"expires {token.expires_at:%Y-%m-%d %H:%M} UTC" if token.expires_at else "never expires"
    click.echo(f"token {token.id} ({shown(name)}) for {shown(email.strip().lower())}, {expires}; it is shown only "
               "this once:", err=True)
    click.echo(secret)


@tokens.command("revoke")
@click.argument("token_id")
def tokens_revoke(token_id: str) -> None:
    """Revoke a token by its id (from `curatore tokens list`): the API refuses it from now on."""
    token = actions.revoke_token(_operator(), token_id)
    tid = token.id
    click.echo(f"revoked {tid} ({shown(token.name)})")


@tokens.command("list")
@click.argument("email")
@click.option("--json", "as_json", is_flag=True)
def tokens_list(email: str, as_json: bool) -> None:
    """A user's tokens: id, name, first characters, dates (never the token itself)."""
    from sqlalchemy import select


    user = get_user(email)
    rows = in_transaction(lambda s: s.execute(select(ApiToken).where(ApiToken.user_id == user.id)
                                              .order_by(ApiToken.created_at)).scalars().all())
    now = utcnow()

    def state(t: ApiToken) -> str:
        if t.revoked_at:
            return "revoked"
        return "expired" if t.expires_at and t.expires_at <= now else "active"

    data = [{"id": str(t.id), "name": t.name, "prefix": t.prefix, "status": state(t),
             "created_at": t.created_at.isoformat(), "expires_at": t.expires_at.isoformat() if t.expires_at else None,
             "last_used_at": t.last_used_at.isoformat() if t.last_used_at else None} for t in rows]
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    for t, d in zip(rows, data, strict=True):
        used = f"{t.last_used_at:%Y-%m-%d %H:%M}" if t.last_used_at else "never"
        expires = f"{t.expires_at:%Y-%m-%d}" if t.expires_at else "never"
        click.echo(f"{d['id']}  {d['prefix']}…  {d['status']:8} created {t.created_at:%Y-%m-%d}  "
                   f"expires {expires}  last used {used}  {t.name}")


def _safe_url(url: str) -> str:
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url


if __name__ == "__main__":
    main()

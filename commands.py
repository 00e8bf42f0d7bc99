"""Operators' commands: `flask reconcile` and `flask doctor`."""

from __future__ import annotations

import click
from flask.cli import with_appcontext

import doctor
import logs
from services import services


@click.command("reconcile")
@click.option("--dry-run", is_flag=True, help="Only list what would be done.")
@with_appcontext
def reconcile_command(dry_run: bool) -> None:
    """Finish or undo every signup left unfinished (after a crash, deploy or Keygen outage)."""
    with logs.scope("reconcile"):
        report = services().reconciler.run_once(dry_run=dry_run)
    for line in report.lines():
        click.echo(line)
    click.echo(
        f"{len(report.worked)} signup(s) {'due' if dry_run else 'worked on'}, "
        f"{report.skipped} busy elsewhere, {len(report.stale)} stale"
    )


@click.command("doctor")
@click.option("--url", help="The portal's public address, to probe the proxy in front of it.")
@with_appcontext
def doctor_command(url: str | None) -> None:
    """Check the settings, Keygen, the database, the rate-limit storage and the proxy, and say in
    plain words what is wrong."""
    portal = services()
    findings = doctor.examine(
        portal.settings,
        portal.keygen,
        portal.journal,
        portal.limits,
        mailer=portal.courier.mailer if portal.courier else None,
        url=url,
    )
    for finding in findings:
        click.echo(finding.line())
    if any(f.level == doctor.ERROR for f in findings):
        raise SystemExit(1)

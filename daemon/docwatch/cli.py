"""The ``docwatch`` command line: parse, call, and turn errors into messages (once, here).

Exit codes: 0 success; 1 nothing found (latest/show) or problems found (verify);
2 bad usage or configuration (a data root that does not exist included); 3 unusable index
(missing, corrupt, newer version); 4 index held by another daemon (or being rebuilt);
77 a permission problem (the message names the path and the missing permission);
70 unexpected internal error.
"""

from __future__ import annotations

import functools
import logging
import sys
from pathlib import Path

import click

from docwatch import __version__, logs
from docwatch.cliviews import ProgressBar, emit, print_document, render_scan, render_verify
from docwatch.config import ConfigError, load_config
from docwatch.core.layout import STAGES
from docwatch.errors import DocwatchError
from docwatch.store import faults

log = logging.getLogger("docwatch")
EXIT_INTERNAL = 70


def config_options(func):
    """--config and the path flags every command shares; flags left unset don't override."""
    options = [
        click.option(
            "--config",
            "config_file",
            type=click.Path(path_type=Path, readable=False),
            help="TOML config file (see config.example.toml).",
        ),
        click.option(
            "--data-root",
            type=click.Path(path_type=Path, readable=False),
            help="Legacy data root (default: data).",
        ),
        click.option(
            "--db",
            type=click.Path(path_type=Path, readable=False),
            help="Index file (default: <data-root>/db/documents.sqlite).",
        ),
        click.option(
            "--index-url",
            help="PostgreSQL index (postgresql://user@host/db); default: the SQLite file --db.",
        ),
        click.option(
            "--docs-root",
            type=click.Path(path_type=Path, readable=False),
            help="Document directories (default: <data-root>/docs).",
        ),
        click.option(
            "--log-level",
            type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
            help="Log verbosity (default: INFO).",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def handle_errors(func):
    """Run a command; print a DocwatchError/ConfigError once and exit with its code."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except ConfigError as exc:
            click.echo(f"docwatch: {exc}", err=True)
            sys.exit(2)
        except DocwatchError as exc:
            click.echo(f"docwatch: {exc}", err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            sys.exit(130)
        except click.exceptions.Exit:
            raise
        except Exception as exc:  # the one place that catches everything
            log.exception("internal error")
            click.echo(f"docwatch: internal error: {exc!r}; please report it", err=True)
            sys.exit(EXIT_INTERNAL)

    return wrapper


def make_config(config_file, **flags):
    """The effective settings, with the process-wide ones applied (logging, I/O threads)."""
    cfg = load_config(config_file, None, flags)
    logs.setup(cfg.log_level, cfg.log_format)
    if cfg.io_threads is not None:  # "auto" needs nothing (and a reader no I/O threads)
        from docwatch.ingest.pool import use_io_threads

        use_io_threads(cfg.io_threads)
    return cfg


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="docwatch")
def main() -> None:
    """Index a legacy LLM pipeline's files into short-id documents and a SQLite index.

    \b
    Example:
      docwatch scan --data-root data && docwatch latest draft <task_id>
    """
    faults.install_from_env()  # test-only seam; no-op unless DOCWATCH_FAULT is set


@main.command()
@config_options
@click.option(
    "--stage",
    type=click.Choice(STAGES),
    multiple=True,
    help="Only this stage (repeatable; default: all).",
)
@click.option("--run-id", help="Label stored in run_id (default: backfill-YYYYMMDD).")
@click.option("--link/--copy", "link", default=None, help="Hard-link sources instead of copying.")
@click.option("--dry-run", is_flag=True, help="Report counts, write nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@handle_errors
def scan(config_file, stage, dry_run, as_json, **flags) -> None:
    """One-shot catch-up: index every settled legacy file not indexed yet.

    \b
    Example:
      docwatch scan --data-root /srv/daydreaming/data --stage draft --json
    """
    from docwatch.ingest.indexer import default_run_id
    from docwatch.ingest.pool import collect_cycles_less_often
    from docwatch.ingest.scan import scan as run_scan

    cfg = make_config(config_file, **flags)
    collect_cycles_less_often()
    run_id = cfg.run_id or default_run_id()
    with ProgressBar(enabled=sys.stderr.isatty() and not as_json) as bar:
        result = run_scan(
            cfg,
            stages=stage or STAGES,
            run_id=run_id,
            dry_run=dry_run,
            progress=bar.start if bar.enabled else None,
            run_facts=(lambda indexer: _attach_run_records(indexer, cfg))
            if cfg.dagster_home
            else None,
        )
    emit(result.as_dict(), as_json, render_scan)


def _attach_run_records(indexer, cfg):
    """The Dagster run records for a scan (imported only when ``dagster_home`` is set)."""
    from docwatch.dagster.runrecords import attach

    return attach(indexer, cfg)


@main.command()
@config_options
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@handle_errors
def status(config_file, as_json, **flags) -> None:
    """Counts by stage and status, pending and unlinked documents, newest document, lag.

    \b
    Example:
      docwatch status --data-root data --json
    """
    from docwatch.status import render
    from docwatch.status import status as get_status

    cfg = make_config(config_file, **flags)
    emit(get_status(cfg.index_location), as_json, render)


@main.command()
@config_options
@click.argument("stage", type=click.Choice(STAGES))
@click.argument("task_id")
@click.option(
    "--field",
    type=click.Choice(["doc_dir", "raw", "parsed", "prompt"]),
    help="Print only the directory path, or the text of raw/parsed/prompt.",
)
@click.option(
    "--status",
    "statuses",
    multiple=True,
    default=("ok",),
    show_default=True,
    help="Accepted statuses (repeatable).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the row as JSON.")
@handle_errors
def latest(config_file, stage, task_id, field, statuses, as_json, **flags) -> None:
    """The latest document of a task (ok by default); exit 1 when there is none.

    \b
    Example:
      docwatch latest draft combo_v1_1f3a9c2b7d4e__creative-synthesis-v2__sonnet-4 --field parsed
    """
    from docwatch.reader import DocumentsIndex

    cfg = make_config(config_file, **flags)
    with DocumentsIndex(cfg.index_location, cfg.docs_root) as idx:
        row = idx.get_latest_by_task(stage, task_id, status=statuses)
        print_document(idx, row, field, as_json)


@main.command()
@config_options
@click.argument("doc_id")
@click.option(
    "--field",
    type=click.Choice(["doc_dir", "raw", "parsed", "prompt"]),
    help="Print only the directory path, or the text of raw/parsed/prompt.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the row as JSON.")
@handle_errors
def show(config_file, doc_id, field, as_json, **flags) -> None:
    """One document's row (and its directory); exit 1 when the id is unknown.

    \b
    Example:
      docwatch show 0k3x9q2m7v1c5b8a --json
    """
    from docwatch.reader import DocumentsIndex

    cfg = make_config(config_file, **flags)
    with DocumentsIndex(cfg.index_location, cfg.docs_root) as idx:
        print_document(idx, idx.get(doc_id), field, as_json)


@main.command()
@config_options
@click.option("--no-checksums", is_flag=True, help="Skip re-hashing document files.")
@click.option(
    "--repair", is_flag=True, help="Rewrite damaged documents from their sources, then check again."
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@handle_errors
def verify(config_file, no_checksums, repair, as_json, **flags) -> None:
    """Check the index against document directories and sources; exit 1 on problems.

    \b
    Example:
      docwatch verify --data-root data --repair
    """
    from docwatch.ingest.indexer import default_run_id
    from docwatch.ingest.verify import repair as run_repair
    from docwatch.ingest.verify import verify as run_verify

    cfg = make_config(config_file, **flags)
    report = run_verify(cfg, checksums=not no_checksums)
    if repair and report.damaged:
        fixed = run_repair(cfg, report.damaged, cfg.run_id or default_run_id("repair"))
        log.warning("rewrote %d damaged documents from their sources", fixed)
        report = run_verify(cfg, checksums=not no_checksums)
    emit(report.as_dict(), as_json, render_verify)
    sys.exit(0 if report.ok else 1)


@main.command("rebuild-index")
@config_options
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@handle_errors
def rebuild_index(config_file, as_json, **flags) -> None:
    """Recreate the index from the documents' metadata.json (the old file is moved aside).

    \b
    Example:
      docwatch rebuild-index --data-root data
    """
    from docwatch.store.locks import claim_daemon, claim_index_alone, writer_lock
    from docwatch.store.rebuild import rebuild, rebuild_postgres

    cfg = make_config(config_file, **flags)
    if cfg.index_url:
        report = rebuild_postgres(cfg.index_url, cfg.docs_root)
    else:
        daemon_lock = claim_daemon(cfg.db)
        try:
            alone = claim_index_alone(cfg.db)  # no scan, watch or repair has it open
            try:
                with writer_lock(cfg.db):
                    report = rebuild(cfg.db, cfg.docs_root)
            finally:
                alone.release()
        finally:
            daemon_lock.release()
    emit(
        report.as_dict(),
        as_json,
        lambda d: (
            f"rebuilt {d['documents']} documents and {d['sources']} sources"
            + (f"; old index moved to {d['moved_aside']}" if d["moved_aside"] else "")
            + "".join(f"\n  problem: {p['path']}: {p['reason']}" for p in d["problems"])
        ),
    )


@main.command()
@config_options
@click.option("--run-id", help='Label stored in run_id (default: from the config, else "watch").')
@click.option(
    "--observer",
    type=click.Choice(["inotify", "polling"]),
    help="File-event source: inotify (local disks) or polling (NFS/CIFS).",
)
@handle_errors
def watch(config_file, **flags) -> None:
    """The daemon: catch up on every folder, then index files as the pipeline writes them.

    Runs until SIGTERM/SIGINT: the batch in hand is finished and the exit code is 0; a second
    signal exits at once with 128+signal (safe: nothing half-written becomes visible). Under
    systemd (Type=notify) it sends READY=1 after the catch-up, STATUS= every few seconds,
    WATCHDOG=1 when WatchdogSec is set, and STOPPING=1. A second daemon on the same index
    exits with code 4, naming the pid that holds it.

    \b
    Example:
      docwatch watch --config /etc/docwatch/config.toml
      docwatch watch --data-root /mnt/nfs/data --observer polling --run-id exp-42
    """
    from docwatch.dagster.runrecords import live_records
    from docwatch.ingest.pool import collect_cycles_less_often
    from docwatch.live.watcher import run_watch

    cfg = make_config(config_file, **flags)
    collect_cycles_less_often()
    run_watch(cfg, run_facts=live_records(cfg))

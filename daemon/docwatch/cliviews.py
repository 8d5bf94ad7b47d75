"""How the commands show what they found: text tables or JSON on stdout, a progress bar on a
terminal.  Formatting only; ``cli.py`` decides what to show."""

from __future__ import annotations

import json
import sys

import click


def emit(data, as_json: bool, render) -> None:
    """``data`` as indented JSON, or as the text ``render`` makes of it."""
    click.echo(json.dumps(data, indent=2, ensure_ascii=False) if as_json else render(data))


class ProgressBar:
    """A click progress bar on a terminal, started once the total is known."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.bar = None

    def start(self, total: int):
        self.bar = click.progressbar(length=total, label="scanning", file=sys.stderr)
        self.bar.__enter__()
        return self.bar.update

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.__exit__(*exc)


def render_scan(d: dict) -> str:
    """The scan's counts per stage, and its problems."""
    head = "dry run (nothing written)" if d["dry_run"] else f"run_id {d['run_id']}"
    lines = [f"scan: {head}, {d['seconds']:.2f}s"]
    lines.append(
        f"  {'stage':<11}{'new':>7}{'indexed':>9}{'ignored':>9}{'deferred':>10}"
        f"{'errors':>8}{'docs+':>8}{'docs~':>8}{'superseded':>12}"
    )
    for stage, c in d["stages"].items():
        lines.append(
            f"  {stage:<11}{c['new']:>7}{c['indexed']:>9}{c['ignored']:>9}{c['deferred']:>10}"
            f"{c['error']:>8}{c['docs_created']:>8}{c['docs_updated']:>8}"
            f"{c['docs_superseded']:>12}"
        )
    for p in d["problems"]:
        lines.append(f"  problem: {p['path']}: {p['reason']}")
    return "\n".join(lines)


def print_document(idx, row: dict, field: str | None, as_json: bool) -> None:
    """``latest`` and ``show``: one field's path or bytes, the row as JSON, or as a table."""
    doc_dir = idx.resolve_doc_dir(row)
    if field == "doc_dir":
        click.echo(str(doc_dir))
    elif field:
        sys.stdout.buffer.write(idx.read_bytes(row, field))
        sys.stdout.flush()
    elif as_json:
        click.echo(json.dumps({**row, "path": str(doc_dir)}, indent=2, ensure_ascii=False))
    else:
        for key, value in row.items():
            shown = json.dumps(value, ensure_ascii=False) if key == "meta_small" else value
            click.echo(f"{key:<24}{shown}")
        click.echo(f"{'path':<24}{doc_dir}")


def render_verify(d: dict) -> str:
    """verify's verdict, what it checked, its problems and notes."""
    checked = ", ".join(f"{v} {k}" for k, v in d["checked"].items())
    lines = [f"verify: {'ok' if d['ok'] else 'PROBLEMS'} ({checked})"]
    lines += [f"  problem: {p['where']}: {p['what']}" for p in d["problems"]]
    lines += [f"  note: {p['where']}: {p['what']}" for p in d["notes"]]
    return "\n".join(lines)

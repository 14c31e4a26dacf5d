"""``bouquet report``: figures, ``report.md`` and a self-contained ``report.html`` from run directories."""

from __future__ import annotations

import base64
import html
from pathlib import Path

from ..checks import ConfigError
from ..files import atomic_write_bytes
from .report import table_header, table_note, table_rows
from .report_data import Run, load_run, methods
from .report_figures import FigureFile, write_figures

_CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0}th,td{border:1px solid #ccc;padding:4px 10px;text-align:right}
th:first-child,td:first-child{text-align:left}th{background:#f3f3f3}figure{margin:1.5em 0}
img{max-width:100%;height:auto;border:1px solid #eee}figcaption{color:#555;font-size:90%}"""


#: one table of a page: its title, header, rows and the note under it
Table = tuple[str, list[str], list[list[str]], str]


def _tables(runs: list[Run]) -> list[Table]:
    """Per run: its title, the table header, rows and note."""
    out = []
    for run in runs:
        data = run.config.get("data", {})
        where = f"{data.get('name', '?')}, {data.get('num_clients', '?')} clients" if data else ""
        rounds = run.config.get("run", {}).get("rounds")
        title = f"{run.name} ({run.path}{'; ' + where if where else ''}{f', {rounds} rounds' if rounds else ''})"
        out.append((title, table_header(run.summary), table_rows(run.summary), table_note(run.summary)))
    return out


def render_markdown(runs: list[Run], figures: list[FigureFile]) -> str:
    """report.md: a results table per run, then each figure (linked PNG) with its caption."""
    return markdown_page("bouquet report", _tables(runs), figures)


def render_html(runs: list[Run], figures: list[FigureFile]) -> str:
    """report.html: the same content, every figure embedded as a base64 PNG (no other file needed)."""
    return html_page("bouquet report", _tables(runs), figures)


def markdown_page(title: str, tables: list[Table], figures: list[FigureFile]) -> str:
    """A Markdown page: each table under its title, then each figure (linked PNG) with its caption."""
    lines = [f"# {title}", ""]
    for heading, header, rows, note in tables:
        lines += [f"## {heading}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        lines += ["", note, ""]
    lines += ["## Figures", ""]
    for f in figures:
        lines += [f"### {f.title}", "", f"![{f.title}]({f.stem}.png)", "", f"{f.caption} ([SVG]({f.stem}.svg))", ""]
    return "\n".join(lines)


def html_page(title: str, tables: list[Table], figures: list[FigureFile]) -> str:
    """A self-contained HTML page: the tables, then every figure embedded as a base64 PNG."""
    e = html.escape
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>{e(title)}</title>", f"<style>{_CSS}</style></head><body>", f"<h1>{e(title)}</h1>"]
    for heading, header, rows, note in tables:
        parts.append(f"<h2>{e(heading)}</h2>")
        parts.append('<table class="results"><thead><tr>' + "".join(f"<th>{e(h)}</th>" for h in header)
                     + "</tr></thead><tbody>")
        parts += ["<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in rows]
        parts.append(f"</tbody></table><p>{e(note)}</p>")
    parts.append("<h2>Figures</h2>")
    for f in figures:
        data = base64.b64encode(f.png).decode("ascii")
        parts.append(f'<figure id="{e(f.stem)}"><h3>{e(f.title)}</h3><img alt="{e(f.title)}" '
                     f'src="data:image/png;base64,{data}"><figcaption>{e(f.caption)}</figcaption></figure>')
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def write_pages(out_dir: Path, title: str, tables: list[Table], figures: list[FigureFile]) -> Path:
    """Write report.md and report.html under ``out_dir`` (atomically); return report.html's path."""
    atomic_write_bytes(out_dir / "report.md", markdown_page(title, tables, figures).encode())
    atomic_write_bytes(out_dir / "report.html", html_page(title, tables, figures).encode())
    return out_dir / "report.html"


def write_report(run_dirs: list[str | Path], out: str | Path | None = None) -> Path:
    """Read the run directories, write figures (PNG + SVG), report.md and report.html; return report.html's path.

    ``out`` defaults to ``<first run dir>/report``. Every file is written atomically.
    """
    if not run_dirs:
        raise ConfigError("RUN_DIR: expected at least one run directory")
    runs = [load_run(p) for p in run_dirs]
    ms = methods(runs)
    if not ms:
        raise ConfigError(f"{runs[0].path}: summary.json lists no algorithms")
    out_dir = Path(out) if out is not None else runs[0].path / "report"
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"--out {out_dir}: exists and is not a directory")
    return write_pages(out_dir, "bouquet report", _tables(runs), write_figures(ms, out_dir))

"""A self-contained HTML page: images embedded as data URIs, inline CSS, no script."""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

from dreamteacher.runfiles import atomic_write

CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222;
       padding: 0 1em; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: 0.5em 0; }
td, th { border: 1px solid #ccc; padding: 0.2em 0.6em; text-align: left; }
th { background: #f3f3f3; }
img { max-width: 100%; image-rendering: auto; }
figure { margin: 1em 0; } .row { display: flex; flex-wrap: wrap; gap: 1em; }
.row figure { flex: 1 1 45%; margin: 0.5em 0; } figcaption { color: #555; font-size: 0.9em; }
.muted { color: #666; font-size: 0.9em; }
code { background: #f3f3f3; padding: 0 0.2em; }
"""


def esc(text: object) -> str:
    return html.escape(str(text))


class Page:
    """Sections of headings, paragraphs, tables and PNG figures, written as one HTML file."""

    def __init__(self, title: str):
        self.title = title
        self.parts: list[str] = [f"<h1>{esc(title)}</h1>"]

    def heading(self, text: str) -> None:
        self.parts.append(f"<h2>{esc(text)}</h2>")

    def para(self, text: str, muted: bool = False) -> None:
        cls = ' class="muted"' if muted else ""
        self.parts.append(f"<p{cls}>{esc(text)}</p>")

    def raw(self, markup: str) -> None:
        self.parts.append(markup)

    def table(self, header: list[str], rows: list[list[object]], raw: bool = False) -> None:
        """Cells are escaped unless `raw` (cells that are already markup, e.g. links); an
        empty `header`: no header row."""
        cell = (lambda c: str(c)) if raw else esc
        head = "<tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr>" if header else ""
        body = "".join("<tr>" + "".join(f"<td>{cell(c)}</td>" for c in r) + "</tr>" for r in rows)
        self.parts.append(f"<table>{head}{body}</table>")

    def image(self, png: bytes, caption: str) -> None:
        self.parts.append(_figure(png, caption))

    def images(self, figures: list[tuple[bytes, str]], pixels: bool = False) -> None:
        """Figures side by side (wrapping on a narrow window); `pixels`: small images (sample
        grids) shown enlarged, pixel by pixel."""
        if figures:
            style = ' style="min-width: 256px; image-rendering: pixelated"' if pixels else ""
            row = "".join(_figure(*f, style=style) for f in figures)
            self.parts.append(f'<div class="row">{row}</div>')

    def html(self) -> str:
        return (
            '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>{esc(self.title)}</title><style>{CSS}</style></head><body>\n"
            + "\n".join(self.parts)
            + "\n</body></html>\n"
        )

    def write(self, path: str | Path) -> Path:
        path = Path(path)
        text = self.html()
        atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
        return path


def _figure(png: bytes, caption: str, style: str = "") -> str:
    data = base64.b64encode(png).decode("ascii")
    return (
        f'<figure><img alt="{esc(caption)}"{style} src="data:image/png;base64,{data}">'
        f"<figcaption>{esc(caption)}</figcaption></figure>"
    )


def _inline(text: str) -> str:
    """Markdown's **bold** and `code` in escaped text."""
    text = esc(text)
    text = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", text)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", text)


def markdown_html(md: str) -> str:
    """The Markdown the package writes (results.md): # headings, paragraphs, pipe tables,
    **bold** and `code`."""
    out: list[str] = []
    lines = md.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        if not line:
            i += 1
        elif line.startswith("#"):
            level = min(len(line) - len(line.lstrip("#")) + 1, 4)  # # -> h2 under the page's h1
            out.append(f"<h{level}>{_inline(line.lstrip('#').strip())}</h{level}>")
            i += 1
        elif line.startswith("|"):
            rows = []
            while i < len(lines) and lines[i].strip().startswith("|"):
                cells = [c.strip() for c in lines[i].strip().strip("|").split("|")]
                if not all(set(c) <= set("-: ") for c in cells):  # the |---| rule
                    rows.append(cells)
                i += 1
            head = "".join(f"<th>{_inline(c)}</th>" for c in rows[0]) if rows else ""
            body = "".join(
                "<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>" for r in rows[1:]
            )
            out.append(f"<table><tr>{head}</tr>{body}</table>")
        else:
            para = []
            while i < len(lines) and lines[i].strip() and lines[i].strip()[0] not in "#|":
                para.append(lines[i].strip())
                i += 1
            out.append(f"<p>{_inline(' '.join(para))}</p>")
    return "\n".join(out)

"""One document, two files: a list of blocks written as Markdown (pictures beside it) and as a
self-contained HTML page (pictures embedded as data URIs, no external reference).

Blocks: `("h1" | "h2", text)`, `("p", text)`, `("table", header, rows)`, `("img", file name,
caption)` for a PNG in the document's folder, `("pre", text)`.
"""

from __future__ import annotations

import base64
import html
import pathlib

from cure_jax.report import table as markdown_table

STYLE = """body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #bbb;padding:.25em .6em;
text-align:left}th{background:#eee}img{max-width:100%}pre{background:#f6f6f6;padding:1em;
overflow-x:auto;font-size:85%}code{font-size:90%}"""


def to_markdown(blocks: list[tuple]) -> str:
    parts = []
    for kind, *args in blocks:
        if kind == "h1":
            parts.append(f"# {args[0]}")
        elif kind == "h2":
            parts.append(f"## {args[0]}")
        elif kind == "p":
            parts.append(args[0])
        elif kind == "table":
            parts.append(markdown_table(args[0], args[1]))
        elif kind == "img":
            parts.append(f"![{args[1]}]({args[0]})")
        elif kind == "pre":
            parts.append(f"```\n{args[0]}\n```")
        else:
            raise ValueError(f"unknown block kind {kind!r}")
    return "\n\n".join(parts) + "\n"


def _inline_code(text: str) -> str:
    """HTML of a line of text, its `code` spans kept as <code> and **bold** as <strong>."""
    pieces = html.escape(text).split("`")
    text = "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(pieces))
    pieces = text.split("**")
    return "".join(f"<strong>{p}</strong>" if i % 2 else p for i, p in enumerate(pieces))


def to_html(blocks: list[tuple], folder: pathlib.Path, *, title: str) -> str:
    """The page, with every picture read from `folder` and embedded.

    Raises:
      FileNotFoundError: a picture is missing.
    """
    body = []
    for kind, *args in blocks:
        if kind in ("h1", "h2", "p"):
            body.append(f"<{kind}>{_inline_code(args[0])}</{kind}>")
        elif kind == "table":
            header = "".join(f"<th>{_inline_code(h)}</th>" for h in args[0])
            rows = "".join("<tr>" + "".join(f"<td>{_inline_code(str(c))}</td>" for c in row)
                           + "</tr>" for row in args[1])
            body.append(f"<table><tr>{header}</tr>{rows}</table>")
        elif kind == "img":
            data = base64.b64encode((folder / args[0]).read_bytes()).decode("ascii")
            body.append(f'<figure><img src="data:image/png;base64,{data}" '
                        f'alt="{html.escape(args[1])}"><figcaption>{_inline_code(args[1])}'
                        "</figcaption></figure>")
        elif kind == "pre":
            body.append(f"<pre>{html.escape(args[0])}</pre>")
        else:
            raise ValueError(f"unknown block kind {kind!r}")
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>'
            f"{html.escape(title)}</title><style>{STYLE}</style></head><body>\n"
            + "\n".join(body) + "\n</body></html>\n")


def write(blocks: list[tuple], folder: pathlib.Path, stem: str, *, title: str) -> None:
    """Writes `<stem>.md` and `<stem>.html` into `folder`."""
    (folder / f"{stem}.md").write_text(to_markdown(blocks))
    (folder / f"{stem}.html").write_text(to_html(blocks, folder, title=title))

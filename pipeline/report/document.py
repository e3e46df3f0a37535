"""A small document model, a list of (kind, content) blocks, and its two renderers. Kinds: h1, h2,
p (text, `**bold**` allowed), table (a DataFrame), img (a file name in the report's folder)."""

from __future__ import annotations

import base64
import html
from pathlib import Path

Block = tuple[str, object]


def to_markdown(blocks: list[Block]) -> str:
    out = []
    for kind, content in blocks:
        if kind == "h1":
            out.append(f"# {content}")
        elif kind == "h2":
            out.append(f"## {content}")
        elif kind == "table":
            out.append(content.to_markdown(index=False, disable_numparse=True) if len(content) else "_(no rows)_")
        elif kind == "img":
            out.append(f"![{content}]({content})")
        else:
            out.append(str(content))
    return "\n\n".join(out) + "\n"


def to_html(blocks: list[Block], folder: Path) -> str:
    body = []
    for kind, content in blocks:
        if kind in ("h1", "h2"):
            body.append(f"<{kind}>{html.escape(content)}</{kind}>")
        elif kind == "table":
            body.append(content.to_html(index=False, na_rep="n/a", border=0, classes="table"))
        elif kind == "img":  # embedded, so the page is whole wherever it is opened (MLflow UI included)
            data = base64.b64encode((folder / content).read_bytes()).decode()
            body.append(f'<img alt="{content}" src="data:image/png;base64,{data}">')
        else:
            text = html.escape(str(content))
            while "**" in text:
                text = text.replace("**", "<strong>", 1).replace("**", "</strong>", 1)
            body.append(f"<p>{text}</p>")
    style = (
        "body{font-family:sans-serif;max-width:66em;margin:2em auto;padding:0 1em}"
        "table{border-collapse:collapse}td,th{padding:.2em .8em;border-bottom:1px solid #ddd;text-align:right}"
        "img{max-width:100%}"
    )
    return (
        f"<!doctype html><meta charset='utf-8'><title>{html.escape(blocks[0][1])}</title><style>{style}</style>\n"
        + "\n".join(body)
    )

"""A small document model, a list of (kind, content) blocks, rendered to Markdown, and the Markdown to
HTML. Kinds: h1, h2, p (Markdown text), table (a DataFrame), img (a file name in the report's folder)."""

from __future__ import annotations

import base64
import html
from pathlib import Path

from markdown_it import MarkdownIt

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
    return markdown_to_html(to_markdown(blocks), str(blocks[0][1]), folder)


def markdown_to_html(markdown: str, title: str, folder: Path) -> str:
    """The Markdown rendered by a real Markdown library (CommonMark with tables), so that what reads right in
    `report.md` reads right here; images embedded, so the page is whole wherever it is opened (MLflow's UI
    included)."""
    renderer = MarkdownIt("commonmark").enable("table")

    def embedded_image(self, tokens, index, options, env) -> str:  # markdown-it binds rules as methods
        name = tokens[index].attrGet("src")
        data = base64.b64encode((folder / name).read_bytes()).decode()
        return f'<img alt="{html.escape(name)}" src="data:image/png;base64,{data}">'

    renderer.add_render_rule("image", embedded_image)
    style = (
        "body{font-family:sans-serif;max-width:66em;margin:2em auto;padding:0 1em}"
        "table{border-collapse:collapse}td,th{padding:.2em .8em;border-bottom:1px solid #ddd;text-align:right}"
        "img{max-width:100%}code{background:#f4f4f4;padding:0 .2em}"
    )
    return (
        f"<!doctype html><meta charset='utf-8'><title>{html.escape(title)}</title><style>{style}</style>\n"
        + renderer.render(markdown)
    )

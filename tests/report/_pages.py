"""Reading the HTML that crest writes: what a page would fetch from elsewhere."""

from __future__ import annotations

from html.parser import HTMLParser


class _Refs(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.refs: list[tuple[str, str]] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        for name, value in attrs:
            if name in ("src", "href", "data", "srcset", "poster") and value is not None:
                self.refs.append((tag, value))


def page_refs(text: str) -> tuple[list[tuple[str, str]], list[str]]:
    """Every (tag, URL) the page's elements load or link to, and every tag, in order."""
    parser = _Refs()
    parser.feed(text)
    return parser.refs, parser.tags


def fetched_elsewhere(text: str) -> list[str]:
    """The URLs the page would fetch from a network: anything but ``data:`` URIs."""
    refs, _ = page_refs(text)
    return [url for tag, url in refs if tag != "a" and not url.startswith("data:")]

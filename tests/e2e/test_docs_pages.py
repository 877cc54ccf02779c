"""The README and the pages under docs/: the README stays short and links every page, every
relative link leads to a file (and heading) that exists, and every curl example shown with its
answer gives that answer on the live server."""

import json
import re
import shlex
from pathlib import Path
from typing import NamedTuple
from urllib.parse import unquote

import pytest
import requests

from harness.server import REPO_ROOT, ServerProcess

README = REPO_ROOT / "README.md"
DOCS = REPO_ROOT / "docs"
PAGES = [README, *sorted(DOCS.glob("*.md"))]
README_MAX_BYTES = 20_000
# Where the examples say the service listens (`make serve`).
EXAMPLE_HOST = "localhost:3000"

FENCE = re.compile(r"^\s*(```|~~~)")
CODE_SPAN = re.compile(r"(`+).*?\1", re.DOTALL)
INLINE_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_LINK = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+\"[^\"]*\")?\s*$", re.MULTILINE)
HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$")
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def name(page: Path) -> str:
    return str(page.relative_to(REPO_ROOT))


def unfenced(text: str) -> str:
    """The page without its fenced code blocks."""
    kept, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
        elif not fenced:
            kept.append(line)
    return "\n".join(kept)


def prose(text: str) -> str:
    """The page without fenced code blocks and code spans: what Markdown renders as links."""
    return CODE_SPAN.sub("", unfenced(text))


def fenced_lines(text: str) -> list[list[tuple[int, str]]]:
    """Each fenced code block as (line number, line) pairs."""
    blocks: list[list[tuple[int, str]]] = []
    block: list[tuple[int, str]] | None = None
    for number, line in enumerate(text.splitlines(), start=1):
        if FENCE.match(line):
            if block is None:
                block = []
            else:
                blocks.append(block)
                block = None
        elif block is not None:
            block.append((number, line))
    return blocks


def anchors(page: Path) -> set[str]:
    """The anchors GitHub gives the page's headings: lower case, punctuation dropped, spaces as
    hyphens, a repeated heading numbered from -1."""
    seen: dict[str, int] = {}
    for line in unfenced(page.read_text()).splitlines():
        match = HEADING.match(line)
        if not match:
            continue
        text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", match.group(1))  # a link: its text
        slug = re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        if count:
            seen[f"{slug}-{count}"] = 1
    return set(seen)


def relative_links(page: Path) -> list[str]:
    text = prose(page.read_text())
    links = INLINE_LINK.findall(text) + REFERENCE_LINK.findall(text)
    return [link for link in links if not SCHEME.match(link)]


def test_the_readme_is_at_most_20_kb() -> None:
    size = len(README.read_bytes())
    assert size <= README_MAX_BYTES, f"README.md is {size} bytes: move a topic to docs/"


def test_the_readme_links_every_page_under_docs() -> None:
    linked = {
        (README.parent / unquote(link.split("#")[0])).resolve() for link in relative_links(README)
    }
    assert PAGES[1:], "no pages under docs/"
    assert [name(page) for page in PAGES[1:] if page.resolve() not in linked] == []


@pytest.mark.parametrize("page", PAGES, ids=name)
def test_every_relative_link_leads_to_a_file_and_heading(page: Path) -> None:
    broken = []
    for link in relative_links(page):
        path, _, anchor = link.partition("#")
        target = (page.parent / unquote(path)).resolve() if path else page
        if not target.exists():
            broken.append(f"{link}: no {target.relative_to(REPO_ROOT)}")
        elif anchor and target.suffix == ".md" and unquote(anchor) not in anchors(target):
            broken.append(f"{link}: no heading #{anchor} in {target.relative_to(REPO_ROOT)}")
    assert broken == []


class Example(NamedTuple):
    """A `$ curl ...` line in a fenced block, and the answer printed on the lines after it."""

    page: Path
    line: int
    command: str
    answer: str

    @property
    def id(self) -> str:
        return f"{name(self.page)}:{self.line}"


def examples(page: Path) -> list[Example]:
    found = []
    for block in fenced_lines(page.read_text()):
        for index, (number, line) in enumerate(block):
            if not line.startswith("$ curl"):
                continue
            answer = []
            for _, following in block[index + 1 :]:
                if not following.strip() or following.startswith("$ "):
                    break
                answer.append(following)
            found.append(Example(page, number, line[2:], "\n".join(answer)))
    return found


EXAMPLES = [example for page in PAGES for example in examples(page)]


class Request(NamedTuple):
    method: str
    path: str
    headers: dict[str, str]
    body: bytes | None


def parse_curl(command: str) -> Request:
    """The request a `curl -s localhost:3000/...` line sends: its -d, -H and -X. Any other option
    is refused, so an example this test cannot replay fails instead of passing unchecked."""
    words = shlex.split(command)
    if words[0] != "curl":
        raise ValueError(f"not a curl command: {command}")
    method, url, headers, data = None, None, {}, []
    args = iter(words[1:])
    for word in args:
        if word in ("-s", "--silent"):
            continue
        if word in ("-d", "--data", "--data-raw", "--data-binary"):
            data.append(next(args))
        elif word in ("-H", "--header"):
            header, _, value = next(args).partition(":")
            headers[header.strip()] = value.strip()
        elif word in ("-X", "--request"):
            method = next(args)
        elif word.startswith("-"):
            raise ValueError(f"curl option {word} not understood by this test: {command}")
        elif url is None:
            url = word
        else:
            raise ValueError(f"two URLs: {command}")
    if url is None:
        raise ValueError(f"no URL: {command}")
    host_and_path = url.removeprefix("http://")
    if not host_and_path.startswith(EXAMPLE_HOST + "/"):
        raise ValueError(f"not an example against {EXAMPLE_HOST}: {url}")
    body = "&".join(data).encode() if data else None
    if body is not None and not any(h.lower() == "content-type" for h in headers):
        headers["Content-Type"] = "application/x-www-form-urlencoded"  # what curl -d sends
    return Request(
        method or ("POST" if data else "GET"),
        host_and_path.removeprefix(EXAMPLE_HOST),
        headers,
        body,
    )


def test_the_pages_show_curl_examples() -> None:
    assert len(EXAMPLES) >= 6, [example.id for example in EXAMPLES]


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda example: example.id)
def test_every_curl_example_is_a_request_and_a_json_answer(example: Example) -> None:
    """Without a server: the line parses, and the lines after it are one JSON document."""
    parse_curl(example.command)
    assert example.answer, f"no answer printed after {example.command}"
    json.loads(example.answer)


@pytest.mark.e2e
@pytest.mark.parametrize("example", EXAMPLES, ids=lambda example: example.id)
def test_every_curl_example_answers_as_shown(server: ServerProcess, example: Example) -> None:
    request = parse_curl(example.command)
    response = requests.request(
        request.method,
        server.url + request.path,
        data=request.body,
        # curl sends no Accept-Encoding unless told: the answer comes as curl would show it.
        headers={"Accept-Encoding": None, **request.headers},
        timeout=10,
    )
    assert response.json() == json.loads(example.answer), (
        f"{example.id}: the page shows\n{example.answer}\nthe service answers\n{response.text}"
    )

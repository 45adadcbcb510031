"""Which features a document gets, by its URI: the one place that decides it.

- A file on this machine (`file:` with no host): every feature.
- An untitled document or a notebook cell: what needs no file on disk: hover on the models it
  defines (profiled from the document's text), the k-fold actions and the lint. Its text is
  analysed as if it were a file beside the workspace root (the notebook's own folder for a cell),
  so relative imports resolve the way running it there would; that path is never read.
- Anything else (`git:` and `http:` documents, `file://host/...`): no feature. They are not files
  of the workspace: a `git:` document is an old version of a file, whose relative paths and
  imports would be read from today's files, and an `http:` one is not the user's code at all.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

FILE = "file"
TEXT = "text"
ELSEWHERE = "elsewhere"
_FROM_TEXT_SCHEMES = {"untitled", "vscode-notebook-cell"}


@dataclass(frozen=True)
class DocumentKind:
    kind: str
    scheme: str
    path: str | None  # where the text is analysed: the file, or a path never read (TEXT)
    reason: str = ""  # for ELSEWHERE: why, in a few words ("this is a git: document")

    @property
    def on_disk(self) -> bool:
        """Features that read paths relative to the file or import its module may run."""
        return self.kind == FILE

    @property
    def analysed(self) -> bool:
        """Features that need only the text may run: hover, lint, k-fold actions."""
        return self.kind in (FILE, TEXT)

    def refused(self) -> str | None:
        """What this document does not get, and why, for the log; None when it gets all."""
        if self.kind == TEXT:
            return (
                f"a {self.scheme}: document is no file on disk: hover, lint and k-fold actions "
                "only, no load checks (their checkpoint paths are relative to a file)"
            )
        if self.kind == ELSEWHERE:
            return f"no features: {self.reason} (not a file of the workspace)"
        return None

    def refusal(self) -> str:
        return (
            f"torchls profiles files on disk, untitled documents and notebook cells; {self.reason}."
        )


def document_kind(uri: str, workspace_root: str | None) -> DocumentKind:
    try:
        parts = urlsplit(uri)
    except ValueError:
        return DocumentKind(ELSEWHERE, "", None, "this document's URI cannot be read")
    scheme = parts.scheme.lower()
    path = unquote(parts.path)
    if "\0" in path:
        return DocumentKind(ELSEWHERE, scheme, None, "this document's path holds a NUL character")
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            return DocumentKind(
                ELSEWHERE, scheme, None, f"this file is on another host ({parts.netloc})"
            )
        if re.match(r"^/[A-Za-z]:", path):  # file:///C:/... on Windows
            path = path[1:]
        return DocumentKind(FILE, scheme, os.path.normpath(path) if path else None)
    if scheme in _FROM_TEXT_SCHEMES:
        return DocumentKind(TEXT, scheme, _stand_in(scheme, path, parts.fragment, workspace_root))
    if not scheme:
        return DocumentKind(ELSEWHERE, scheme, None, "this document's URI has no scheme")
    article = "an" if scheme[0] in "aefhilmnorsx" else "a"  # as the letter is spoken
    return DocumentKind(ELSEWHERE, scheme, None, f"this is {article} {scheme}: document")


def _stand_in(scheme: str, path: str, fragment: str, root: str | None) -> str:
    """A path for a document that has none: in the workspace root (or, for a notebook's cell,
    the notebook's folder when that is inside the workspace), named after the document."""
    base = Path(root) if root else Path(os.sep, "torchls-untitled")
    if scheme == "vscode-notebook-cell":
        notebook = Path(path)
        folder = notebook.parent
        if root and notebook.is_absolute() and folder.is_dir() and folder.is_relative_to(root):
            base = folder
        cell = hashlib.sha256(fragment.encode()).hexdigest()[:8]
        name = f"{_identifier(notebook.stem)}_cell_{cell}"
    else:
        name = f"untitled_{_identifier(path)}"
    return str(base / f"{name}.py")


def _identifier(text: str) -> str:
    return re.sub(r"\W", "_", Path(text).stem or text)[:60] or "document"

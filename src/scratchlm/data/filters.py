"""Web-text filters applied to one document: URL blocklist, language identification, C4 line rules, PII masking.

Each is off unless asked for (plain text and JSONL prepare exactly as before), each is counted in the report, and
each comes from a published pipeline (docs/data.md, "Web data"):

- URL blocklist (RefinedWeb/FineWeb block URLs on the UT1 list): a document whose URL's host is a listed domain or
  a sub-domain of one is dropped. A small list ships in `scratchlm/resources/url_blocklist.txt`; `--url-blocklist
  FILE` adds more (one domain a line, `#` comments). Documents without a URL are never blocked.
- Language identification (CCNet, FineWeb with fastText; C4 with langdetect): `py3langid`, whose naive-Bayes model
  over byte n-grams (Lui & Baldwin's langid.py, 97 languages) ships inside the wheel, so nothing is downloaded at
  run time. Probabilities are normalised over the languages; a document is kept when its top language is one of
  `--languages` with probability >= `--language-threshold` (0.65, FineWeb's fastText threshold).
- C4's line rules (Raffel et al. 2020, section 2.2, and the `c4_utils.py` that built C4): drop lines that do not
  end in terminal punctuation, lines of fewer than N words, lines with "javascript" or a cookie / terms-of-use
  notice (C4's whole-document "lorem ipsum" rule is a quality reason, `clean.py`).
- PII (FineWeb's last step): e-mail addresses become `[email]` and IPv4 addresses `[ip]`; the report counts them.
  (FineWeb substitutes look-alike addresses such as `email@example.com`, which read more fluently but are still
  addresses to anyone who scans the output for them; a plain marker is unambiguous.)
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from importlib import resources
from pathlib import Path
from urllib.parse import urlsplit

from scratchlm.errors import ScratchlmError

BUILTIN_BLOCKLIST = "url_blocklist.txt"

# ---------------------------------------------------------------------------------------------------- URLs


def domain_of(url: str) -> str:
    """The lower-cased host of a URL without `www.` and port ("" if it has none)."""
    if not url:
        return ""
    try:
        host = urlsplit(url if "//" in url else "//" + url).hostname or ""
    except ValueError:
        return ""
    return host[4:] if host.startswith("www.") else host


def read_blocklist(lines: Iterable[str]) -> set[str]:
    out = set()
    for line in lines:
        entry = line.split("#", 1)[0].strip().lower()
        if entry:
            out.add(domain_of(entry) or entry)
    return out


def load_blocklist(builtin: bool, files: Iterable[Path]) -> list[str]:
    """The sorted blocked domains: the shipped list (if `builtin`) plus every file; a one-line error for a bad file."""
    domains: set[str] = set()
    if builtin:
        text = (resources.files("scratchlm") / "resources" / BUILTIN_BLOCKLIST).read_text(encoding="utf-8")
        domains |= read_blocklist(text.splitlines())
    for path in files:
        try:
            domains |= read_blocklist(Path(path).read_text(encoding="utf-8").splitlines())
        except (OSError, UnicodeDecodeError) as e:
            raise ScratchlmError(
                f"cannot read --url-blocklist {path}: {e}; pass a text file with one domain a line"
            ) from None
    return sorted(domains)


def blocked_domain(domain: str, blocked: frozenset[str]) -> str | None:
    """The listed domain that `domain` is or lies under (`a.b.example.com` under `example.com`), else None."""
    parts = domain.split(".")
    for i in range(len(parts) - 1):
        candidate = ".".join(parts[i:])
        if candidate in blocked:
            return candidate
    return None


# ---------------------------------------------------------------------------------------------------- language


LANGID_CHARS = 1000


class LanguageID:
    """py3langid with normalised probabilities (built once per worker: loading the model takes ~0.1 s)."""

    def __init__(self) -> None:
        try:
            from py3langid import langid
        except ImportError:
            raise ScratchlmError(
                "--languages needs the py3langid package; install it with pip install -e \".[web]\""
            ) from None
        self._model = langid.LanguageIdentifier.from_model_file(langid.MODEL_FILE, norm_probs=True)

    @property
    def labels(self) -> list[str]:
        return self._model.labels

    def classify(self, text: str) -> tuple[str, float]:
        """(ISO 639-1 code, probability) of the most likely language.

        The first `LANGID_CHARS` characters decide: langid.py is accurate on tweet-length text, and its cost grows
        faster than the length (10,000 characters take ~25 ms, 1,000 ~1.5 ms on our CPU)."""
        lang, p = self._model.classify(text[:LANGID_CHARS])
        return lang, float(p)


def check_languages(languages: Iterable[str]) -> None:
    known = set(LanguageID().labels)
    unknown = sorted(set(languages) - known)
    if unknown:
        raise ScratchlmError(
            f"--languages: unknown language code(s) {', '.join(unknown)}; use ISO 639-1 codes such as en, fr, de, zh"
        )


# ---------------------------------------------------------------------------------------------------- C4 lines

LINE_RULES = ("no_terminal_punct", "too_few_words", "notice")
"""Why a line is removed (counted in the report's `lines_removed`), in the order they are checked."""
_TERMINAL = (".", "!", "?", '"', "\u201d", "'", "\u2019", "\u3002", "\uff01", "\uff1f")
_NOTICE = re.compile(r"javascript|terms of use|privacy policy|cookie policy|uses cookies|use of cookies|use cookies",
                     re.IGNORECASE)


def filter_lines(
    text: str, terminal_punct: bool, min_words: int, notices: bool
) -> tuple[str, tuple[int, int, int]]:
    """C4's line rules on a cleaned document: the kept lines, and how many were removed per `LINE_RULES`.

    Blank lines are kept (they separate paragraphs), then runs of them collapse as in `normalize`."""
    kept, removed = [], [0, 0, 0]
    for line in text.split("\n"):
        s = line.strip()
        if not s:
            kept.append("")
        elif terminal_punct and not s.endswith(_TERMINAL):
            removed[0] += 1
        elif min_words and len(s.split()) < min_words:
            removed[1] += 1
        elif notices and _NOTICE.search(s):
            removed[2] += 1
        else:
            kept.append(line)
    if not any(removed):
        return text, (0, 0, 0)
    out = re.sub("\n{3,}", "\n\n", "\n".join(kept)).strip()
    return out, (removed[0], removed[1], removed[2])


# ---------------------------------------------------------------------------------------------------- PII

EMAIL_MASK = "[email]"
IP_MASK = "[ip]"
_EMAIL = re.compile(r"\b[A-Za-z0-9._%+-]+@(?:[A-Za-z0-9-]+\.)+[A-Za-z]{2,}\b")
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_IPV4 = re.compile(rf"(?<![\w.]){_OCTET}(?:\.{_OCTET}){{3}}(?![\w.]|\.\d)")


def mask_pii(text: str) -> tuple[str, int, int]:
    """E-mail and IPv4 addresses replaced (see the module docstring); returns (text, e-mails, IPs)."""
    n_email = n_ip = 0
    if "@" in text:
        text, n_email = _EMAIL.subn(EMAIL_MASK, text)
    if "." in text:
        text, n_ip = _IPV4.subn(IP_MASK, text)
    return text, n_email, n_ip

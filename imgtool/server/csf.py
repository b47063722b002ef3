"""The CSF (Command Sequence File) description that a client sends to ``/sign/imx``: read the way
NXP's ``cst`` reads it, then held to an allow-list of HAB4 signing commands.

``cst``'s lexer (flex, case-insensitive) turns the text into: WORD ``[a-z][a-z0-9]*``; FILENAME
``".*"`` -- greedy, from the first double quote to the LAST one on the line, with backslashes turned
into slashes; NUMBER ``0x[0-9a-f]+`` or ``[0-9]+``; ``=``, ``|``, ``[``, ``]``, ``,``, ``.``; a
comment ``#`` to the end of the line (only when a newline follows); a continuation ``\\`` that
swallows the REST of the line and its newline; spaces and tabs; and it silently ignores every
other character. That last rule is how ``File = !"/abs/path"`` reached an absolute path: the ``!``
vanished in the lexer. :func:`tokenize` reproduces that lexer exactly, and :func:`parse` refuses
anything that would fall into its "ignore" rule, so what is checked here is what ``cst`` sees.

Accepted: the HAB4 commands used to sign an image (Header, Install SRK, Install CSFK, Install
NOCAK, Authenticate CSF, Install Key, Authenticate Data, Unlock, Init, Set Engine, NOP), each with
its own keywords and value shapes. ``File`` values must be plain quoted relative names of regular
files in this request's key archive (never under ``keys/``); ``Blocks`` must name the uploaded
artifact. The accepted description is written back out in canonical form (:func:`render`), so the
text ``cst`` reads is the text that was checked. Every refusal is a :class:`CsfError` naming the
line.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import NamedTuple

MAX_BYTES = 64 * 1024
MAX_LINE = 1024
MAX_LINES = 2000

# Token kinds (as cst's parser sees them)
WORD, FILENAME, NUMBER, EQUALS, OR, LBRACK, RBRACK, COMMA, DOT, EOL = (
    "WORD",
    "FILENAME",
    "NUMBER",
    "=",
    "|",
    "[",
    "]",
    ",",
    ".",
    "EOL",
)
_PUNCT = {"=": EQUALS, "|": OR, "[": LBRACK, "]": RBRACK, ",": COMMA, ".": DOT}
# cst's flex rules as one scanner; the alternatives are ordered so that the first that matches
# is flex's choice (longest match, first rule on a tie). FILENAME is greedy to the LAST quote
# on the line; a comment or continuation needs its newline (without one, flex skips the byte).
_SCAN = re.compile(
    rb"""(?P<WORD>[A-Za-z][A-Za-z0-9]*)
    |(?P<NUMBER>0[xX][0-9A-Fa-f]+|[0-9]+)
    |(?P<FILENAME>"[^\n]*")
    |(?P<COMMENT>\#[^\n]*\n)
    |(?P<CONT>\\[^\n]*\n)
    |(?P<BLANK>[ \t]+|\r(?=\n))
    |(?P<EOL>\n)
    |(?P<PUNCT>[=|\[\],.])
    |(?P<IGNORED>[\s\S])""",
    re.VERBOSE,
)
_G = _SCAN.groupindex
_G_WORD, _G_NUMBER, _G_FILENAME, _G_COMMENT = (
    _G["WORD"],
    _G["NUMBER"],
    _G["FILENAME"],
    _G["COMMENT"],
)
_G_CONT, _G_BLANK, _G_EOL, _G_PUNCT = _G["CONT"], _G["BLANK"], _G["EOL"], _G["PUNCT"]
_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._+-]*(?:/[A-Za-z0-9_][A-Za-z0-9._+-]*)*")


class CsfError(Exception):
    """The CSF is refused; ``str()`` is one line that names the line number."""

    def __init__(self, line: int, why: str) -> None:
        super().__init__(f"CSF line {line}: {why}" if line else f"CSF: {why}")
        self.line = line


class Token(NamedTuple):  # a tuple: made ~100 times per request, cheaply
    kind: str
    text: str  # WORD/NUMBER: as written; FILENAME: the name cst uses (quotes off, \ -> /)
    line: int
    raw: bytes = b""  # FILENAME: the bytes between the quotes as written
    ignored: bytes = b""  # bytes cst's lexer would skip silently (a refusal reason)


def tokenize(data: bytes) -> list[Token]:
    """``cst``'s lexer, rule for rule (longest match, first rule on a tie). Characters that
    ``cst`` ignores come back as tokens of kind ``"IGNORED"`` so that the caller can refuse them;
    comments and continuations come back as ``"COMMENT"``/``"CONT"`` with what they swallowed."""
    out: list[Token] = []
    add = out.append
    line = 1
    for m in _SCAN.finditer(data):
        g = m.lastindex  # the rule that matched (groups numbered as in _SCAN)
        if g == _G_BLANK:
            continue
        text = m.group()
        if g == _G_WORD:
            add(Token(WORD, text.decode("ascii"), line))
        elif g == _G_EOL:
            add(Token(EOL, "", line))
            line += 1
        elif g == _G_PUNCT:
            c = text.decode("ascii")
            add(Token(_PUNCT[c], c, line))
        elif g == _G_NUMBER:
            add(Token(NUMBER, text.decode("ascii"), line))
        elif g == _G_FILENAME:
            raw = text[1:-1]
            name = raw.replace(b"\\", b"/").split(b"\0", 1)[0]  # strdup stops at a NUL
            add(Token(FILENAME, name.decode("latin-1"), line, raw))
        elif g == _G_COMMENT or g == _G_CONT:
            add(Token("COMMENT" if g == _G_COMMENT else "CONT", "", line, b"", text[1:-1]))
            line += 1
        else:
            add(Token("IGNORED", "", line, b"", text))
    add(Token(EOL, "", line))  # cst appends a newline at EOF
    return out


# ------------------------------------------------------------------------------ the allow-list
ENGINES = ("any", "sahara", "rtic", "dcp", "caam", "sw", "srtc", "snvs", "ocotp")
HASHES = ("sha1", "sha256", "sha384", "sha512")

# value shapes
V_FILE = "file"  # one FILENAME from the key archive
V_BLOCKS = "blocks"  # NUMBER NUMBER NUMBER FILENAME (, ...)*
V_NUM = "num"  # one NUMBER
V_VERSION = "version"  # NUMBER . NUMBER
V_WORD = "word"  # one WORD from a list
V_FLAGS = "flags"  # WORDs/NUMBERs joined by | (engine configuration)
V_LIST = "list"  # WORDs/NUMBERs separated by , (features, UID)

_ENGINE = (V_WORD, ENGINES)
_ENGCFG = (V_FLAGS, ())
_HASH = (V_WORD, HASHES)
_CERTFMT = (V_WORD, ("x509",))
_SIGFMT = (V_WORD, ("cms", "pkcs1"))
_IDX = (V_NUM, ())
_FILE = (V_FILE, ())

SECTIONS: dict[str, dict[str, tuple[str, tuple[str, ...]]]] = {
    "header": {
        "target": (V_WORD, ("hab",)),
        "version": (V_VERSION, ()),
        "hash algorithm": _HASH,
        "engine": _ENGINE,
        "engine configuration": _ENGCFG,
        "certificate format": _CERTFMT,
        "signature format": _SIGFMT,
    },
    "install srk": {"file": _FILE, "source index": _IDX, "hash algorithm": _HASH},
    "install csfk": {"file": _FILE, "certificate format": _CERTFMT},
    "install nocak": {"file": _FILE, "certificate format": _CERTFMT},
    "authenticate csf": {
        "engine": _ENGINE,
        "engine configuration": _ENGCFG,
        "signature format": _SIGFMT,
    },
    "install key": {
        "file": _FILE,
        "verification index": _IDX,
        "target index": _IDX,
        "certificate format": _CERTFMT,
        "hash algorithm": _HASH,
    },
    "authenticate data": {
        "blocks": (V_BLOCKS, ()),
        "verification index": _IDX,
        "engine": _ENGINE,
        "engine configuration": _ENGCFG,
        "signature format": _SIGFMT,
    },
    "unlock": {"engine": _ENGINE, "features": (V_LIST, ()), "uid": (V_LIST, ())},
    "init": {"engine": _ENGINE, "features": (V_LIST, ())},
    "set engine": {"hash algorithm": _HASH, "engine": _ENGINE, "engine configuration": _ENGCFG},
    "nop": {},
}
_ONCE = ("header", "install srk", "authenticate csf")

# Caps beyond which NXP's cst crashes, hangs or writes a CSF that HAB cannot hold (cst 3.3.1
# segfaults on ~300 Unlock sections and on Target Index 0x80000000; 245 Blocks entries or 40
# Authenticate Data sections make it fail): far above what a signing CSF uses.
MAX_SECTIONS = 32
MAX_SECTION_COUNT = {
    "install csfk": 1,
    "install nocak": 1,
    "install key": 3,  # HAB4 key slots 2..4
    "authenticate data": 8,
    "unlock": 8,
    "init": 8,
    "set engine": 8,
    "nop": 8,
}
MAX_BLOCKS = 16  # per Blocks statement
MAX_BLOCKS_TOTAL = 32
MAX_LIST = 16  # Features / UID / Engine Configuration items
U32 = 0xFFFFFFFF
# numeric ranges (inclusive) of single-number keywords, by (section, keyword)
RANGES: dict[tuple[str, str], tuple[int, int]] = {
    ("install srk", "source index"): (0, 3),
    ("install key", "verification index"): (0, 4),
    ("install key", "target index"): (2, 4),
    ("authenticate data", "verification index"): (0, 4),
}
MAX_VERSION_MINOR = 9
MAX_ENGINE_CONFIGURATION = 0xFF


def number(tok: Token) -> int:
    """A NUMBER token's value (hex with 0x, else decimal), as cst reads it."""
    t = tok.text
    return int(t[2:], 16) if t[:2].lower() == "0x" else int(t, 10)


@dataclass
class Statement:
    line: int
    keyword: str  # canonical, lower case, single spaces
    tokens: list[Token]  # the value


@dataclass
class Section:
    line: int
    name: str  # canonical, lower case
    statements: list[Statement] = field(default_factory=list)


@dataclass
class Csf:
    sections: list[Section]
    files: list[str]  # every File value (key-archive names)
    blocks: list[str]  # every Blocks file name


# Anything _text_checks' loop would refuse: a byte outside TAB and printable ASCII (CR only as
# the last byte of a line), or a line longer than MAX_LINE. Clean text skips the loop.
_SUSPECT = re.compile(rb"[^\t\n\r\x20-\x7e]|\r(?!\n|\Z)|[^\n]{%d}" % (MAX_LINE + 1))


def _text_checks(data: bytes) -> None:
    if len(data) > MAX_BYTES:
        raise CsfError(0, f"larger than {MAX_BYTES} bytes")
    if not data.strip():
        raise CsfError(0, "empty")
    if data.count(b"\n") < MAX_LINES and _SUSPECT.search(data) is None:
        return  # _line_checks would find nothing to refuse
    _line_checks(data)


def _line_checks(data: bytes) -> None:
    """Line by line: the first refusal, naming its line."""
    for no, raw in enumerate(data.split(b"\n"), 1):
        if no > MAX_LINES:
            raise CsfError(no, f"more than {MAX_LINES} lines")
        if len(raw) > MAX_LINE:
            raise CsfError(no, f"longer than {MAX_LINE} bytes")
        body = raw[:-1] if raw.endswith(b"\r") else raw  # CRLF files are fine
        for b in body:
            if b == 0:
                raise CsfError(no, "NUL byte")
            if b > 0x7E:
                raise CsfError(no, "non-ASCII byte (the CSF must be plain ASCII text)")
            if b < 0x20 and b != 0x09:
                raise CsfError(no, f"control character 0x{b:02x}")


def _lines(tokens: list[Token]) -> list[list[Token]]:
    """Logical lines (a continuation joins two physical lines, as in cst)."""
    lines: list[list[Token]] = []
    cur: list[Token] = []
    for t in tokens:
        if t.kind == "IGNORED":
            what = t.ignored.decode("latin-1")
            raise CsfError(t.line, f"unexpected character {what!r} (cst would skip it)")
        if t.kind == "CONT":
            if t.ignored.strip(b" \t\r"):
                raise CsfError(t.line, "text after a line continuation '\\' (cst drops it)")
            continue
        if t.kind == "COMMENT":  # swallows its newline: no end of line for cst
            if cur:
                raise CsfError(t.line, "comment after a value (cst joins it to the next line)")
            continue
        if t.kind == EOL:
            if cur:
                lines.append(cur)
            cur = []
            continue
        cur.append(t)
    if cur:
        lines.append(cur)
    return lines


def check_name(tok: Token) -> str:
    """A FILENAME token's value if it is a plain relative name; else CsfError."""
    raw = tok.raw.decode("latin-1")
    if '"' in raw:
        raise CsfError(tok.line, "more than one quoted string on a line (cst joins them)")
    if "\\" in raw:
        raise CsfError(tok.line, "backslash in a file name")
    if raw.startswith("/"):
        raise CsfError(tok.line, f"absolute file name {raw!r}")
    parts = raw.split("/")
    if ".." in parts or "." in parts or "" in parts:
        raise CsfError(tok.line, f"file name {raw!r} is not a plain relative name")
    if not _NAME_RE.fullmatch(raw):
        raise CsfError(tok.line, f"file name {raw!r} has characters outside [A-Za-z0-9._+-/]")
    return raw


def _value(stmt: Statement, shape: str, allowed: tuple[str, ...]) -> None:
    v = stmt.tokens
    kinds = [t.kind for t in v]
    where, kw = stmt.line, stmt.keyword
    if not v:
        raise CsfError(where, f"{kw!r} has no value")
    if shape == V_FILE:
        if kinds != [FILENAME]:
            raise CsfError(where, f"{kw!r} must be one double-quoted file name")
        check_name(v[0])
    elif shape == V_NUM:
        if kinds != [NUMBER]:
            raise CsfError(where, f"{kw!r} must be a number")
    elif shape == V_VERSION:
        if kinds != [NUMBER, DOT, NUMBER] or v[0].text != "4":
            raise CsfError(where, "Version must be 4.x (HAB4)")
        if len(v[2].text) > 3 or number(v[2]) > MAX_VERSION_MINOR:
            raise CsfError(where, f"Version must be 4.0 to 4.{MAX_VERSION_MINOR}")
    elif shape == V_WORD:
        if kinds != [WORD] or v[0].text.lower() not in allowed:
            raise CsfError(where, f"{kw!r} must be one of {', '.join(allowed)}")
    elif shape in (V_FLAGS, V_LIST):
        sep = OR if shape == V_FLAGS else COMMA
        prev = sep
        for t in v:
            if t.kind in (WORD, NUMBER):
                pass
            elif t.kind == sep and prev != sep:
                pass
            else:
                raise CsfError(where, f"unexpected {t.kind!r} in {kw!r}")
            prev = t.kind
        if prev == sep:
            raise CsfError(where, f"{kw!r} ends with {sep!r}")
        if sum(t.kind != sep for t in v) > MAX_LIST:
            raise CsfError(where, f"{kw!r}: more than {MAX_LIST} items")
        top = MAX_ENGINE_CONFIGURATION if kw == "engine configuration" else U32
        for t in v:
            if t.kind == NUMBER and number(t) > top:
                raise CsfError(where, f"{kw!r}: {t.text} is out of range (0 to {top:#x})")
    elif shape == V_BLOCKS:
        i = n = 0
        while True:
            if kinds[i : i + 4] != [NUMBER, NUMBER, NUMBER, FILENAME]:
                raise CsfError(where, 'Blocks must be: address offset length "file" [, ...]')
            check_name(v[i + 3])
            addr, off, length = (number(t) for t in v[i : i + 3])
            if addr > U32 or off > U32 or not 0 < length <= U32 or addr + length > U32 + 1:
                raise CsfError(where, "Blocks: address, offset and length are 32-bit, length > 0")
            i += 4
            n += 1
            if n > MAX_BLOCKS:
                raise CsfError(where, f"Blocks: more than {MAX_BLOCKS} blocks")
            if i == len(v):
                break
            if kinds[i] != COMMA or i + 1 == len(v):
                raise CsfError(where, "Blocks: blocks are separated by ','")
            i += 1


def parse(data: bytes) -> Csf:
    """Parse and check a CSF description. Raises CsfError naming the line."""
    _text_checks(data)
    sections: list[Section] = []
    for toks in _lines(tokenize(data)):
        first = toks[0]
        if first.kind == LBRACK:
            words = toks[1:-1]
            if toks[-1].kind != RBRACK or not words or any(t.kind != WORD for t in words):
                raise CsfError(first.line, "a section header is [Words]")
            name = " ".join(t.text.lower() for t in words)
            if name not in SECTIONS:
                raise CsfError(first.line, f"section [{name}] is not allowed (HAB4 signing only)")
            if name in _ONCE and any(s.name == name for s in sections):
                raise CsfError(first.line, f"section [{name}] appears twice")
            if not sections and name != "header":
                raise CsfError(first.line, "the first section must be [Header]")
            if len(sections) >= MAX_SECTIONS:
                raise CsfError(first.line, f"more than {MAX_SECTIONS} sections")
            cap = MAX_SECTION_COUNT.get(name)
            if cap is not None and sum(s.name == name for s in sections) >= cap:
                raise CsfError(first.line, f"more than {cap} [{name}] section(s)")
            sections.append(Section(first.line, name))
            continue
        eq = next((k for k, t in enumerate(toks) if t.kind == EQUALS), -1)
        if eq <= 0 or any(t.kind != WORD for t in toks[:eq]):
            raise CsfError(first.line, "expected 'Keyword = value' or a [Section]")
        if not sections:
            raise CsfError(first.line, "keyword before the first section")
        keyword = " ".join(t.text.lower() for t in toks[:eq])
        sec = sections[-1]
        spec = SECTIONS[sec.name].get(keyword)
        if spec is None:
            raise CsfError(first.line, f"keyword {keyword!r} is not allowed in [{sec.name}]")
        if any(s.keyword == keyword for s in sec.statements):
            raise CsfError(first.line, f"keyword {keyword!r} given twice in [{sec.name}]")
        stmt = Statement(first.line, keyword, toks[eq + 1 :])
        _value(stmt, *spec)
        bounds = RANGES.get((sec.name, keyword))
        if bounds is not None and not bounds[0] <= number(stmt.tokens[0]) <= bounds[1]:
            raise CsfError(
                first.line, f"{keyword!r} must be {bounds[0]} to {bounds[1]} in [{sec.name}]"
            )
        sec.statements.append(stmt)
    if not sections:
        raise CsfError(0, "no sections")
    for need in _ONCE:
        if not any(s.name == need for s in sections):
            raise CsfError(0, f"no [{need}] section")
    if "install csfk" in (x.name for x in sections) and "install nocak" in (
        x.name for x in sections
    ):
        raise CsfError(0, "[Install CSFK] and [Install NOCAK] exclude each other")
    files: list[str] = []
    blocks: list[str] = []
    for sec in sections:
        for st in sec.statements:
            names = [check_name(t) for t in st.tokens if t.kind == FILENAME]
            (blocks if st.keyword == "blocks" else files).extend(names)
    if len(blocks) > MAX_BLOCKS_TOTAL:
        raise CsfError(0, f"more than {MAX_BLOCKS_TOTAL} Blocks entries in all")
    return Csf(sections, files, blocks)


def check_files(
    csf: Csf,
    archive_files: Collection[str],
    artifact: str,
    data: bytes | None = None,
    artifact_size: int | None = None,
) -> None:
    """File values must name regular files of the key archive (not under keys/), Blocks the
    uploaded artifact (each block inside it when ``artifact_size`` is given). ``archive_files``
    holds the archive's regular files' relative names."""
    for sec in csf.sections:
        for st in sec.statements:
            for t in st.tokens:
                if t.kind != FILENAME:
                    continue
                name = check_name(t)
                if st.keyword == "blocks":
                    if name != artifact:
                        raise CsfError(st.line, f"Blocks may name only the uploaded {artifact!r}")
                    continue
                if name.split("/", 1)[0] == "keys" or name.rsplit("/", 1)[-1] == "key_pass.txt":
                    raise CsfError(st.line, f"{name!r}: private key material may not be named")
                if name not in archive_files:
                    raise CsfError(st.line, f"{name!r} is not a file of this machine's key archive")
            if st.keyword == "blocks" and artifact_size is not None:
                nums = [number(t) for t in st.tokens if t.kind == NUMBER]
                for off, length in zip(nums[1::3], nums[2::3], strict=True):
                    if off + length > artifact_size:
                        raise CsfError(
                            st.line,
                            f"Blocks: offset {off:#x} + length {length:#x} is past the end of "
                            f"the {artifact_size}-byte artifact",
                        )


def render(csf: Csf) -> bytes:
    """The checked description in canonical form: one statement per line, one space between
    tokens, blocks joined by ``, \\`` continuations (cst joins quoted strings on one line)."""
    out: list[str] = []
    for sec in csf.sections:
        out.append("[" + " ".join(w.capitalize() for w in sec.name.split()) + "]")
        for st in sec.statements:
            parts: list[str] = []
            for t in st.tokens:
                if t.kind == FILENAME:
                    parts.append(f'"{check_name(t)}"')
                elif t.kind == COMMA and st.keyword == "blocks":
                    parts[-1] += ", \\\n       "
                elif t.kind == DOT:
                    parts[-1] += "."
                elif parts and parts[-1].endswith("."):
                    parts[-1] += t.text
                else:
                    parts.append(t.text)
            kw = " ".join(w.capitalize() for w in st.keyword.split())
            out.append(f"    {kw} = " + " ".join(parts))
        out.append("")
    return ("\n".join(out) + "\n").encode("ascii")

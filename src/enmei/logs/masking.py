"""Generic masking of a log line's variable parts: the first step of template mining.

Only rules that hold for logs in general, none written for one application's logs: UUIDs, IPv4
addresses (with a port), MAC addresses, hex numbers, absolute paths, what follows a URL's scheme, and
then every piece of a token that is more than half digits, starts with one or holds six in a row
(``8080``, ``-3``, ``12ms``, ``blk_-1608999687919862906``, ``2005-06-03``, ``DFSClient_1537864556_1``),
and the literals ``true``, ``false`` and ``null``. A token is cut into pieces at punctuation that
separates fields (``:=,;()[]{}<>"'|@`` and dots), so ``uid=1000`` becomes ``uid=<*>`` and
``10.1.2.3:50010`` becomes ``<*>:<*>``; a piece with a digit in it that is mostly letters (``en0``,
``SOCKS5``, ``ipv6``) is a word and stays.

Consecutive masked tokens are merged into one ``<*>`` (a variable may span several tokens, as a date
with a time does), so one message type has one token count however its variables are written.
"""

from __future__ import annotations

import re

__all__ = ["SEPARATORS", "WILDCARD", "forget_memos", "mask_key", "mask_line", "mask_token", "normalise_template"]

WILDCARD = "<*>"

# Whole-token rules, tried before the piecewise rules; each pattern matches inside a token. Each is
# tried only on a token with the characters it needs (one combined alternation cost more than all the
# rest of the masking): (pattern, character, how many at least).
_SPECIALS = (
    (re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"), "-", 4),  # UUID
    (re.compile(r"(?:^/)?(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?![\w.])"), ".", 3),  # IPv4 (Java's "/" before it)
    (re.compile(r"(?<![\w:])(?:[0-9a-fA-F]{2}:){5}[0-9a-fA-F]{2}(?![\w:])"), ":", 5),  # MAC
    (re.compile(r"\b0[xX][0-9a-fA-F]+\b"), "0", 1),  # hex number
    (re.compile(r"(?<=://)[^\s/]*\S*"), "://", 1),  # what follows a URL's scheme (the scheme stays)
    (re.compile(r"(?<![\w.])(?:/[\w.~@%+-]+){2,}/?"), "/", 2),  # absolute path with two parts or more
)
# Field separators inside a token: pieces between them are judged one by one.
SEPARATORS = re.compile(r"(\.+|[:=,;()\[\]{}<>\"'|@])")
_LITERALS = frozenset({"true", "false", "null", "True", "False", "NULL"})
_DIGIT = re.compile(r"\d")
_ID_DIGITS = re.compile(r"\d{6}")  # six digits in a row: an identifier (``DFSClient_1537864556_1``), not a word
_MAYBE_VARIABLE = re.compile(r"\d|/|true|false|null|True|False|NULL")
_WILD_RUN = re.compile(r"<\*>(?:[^\w<]*<\*>)+")
_SPACE = re.compile(r"\s+")
_WILD_TOKENS = re.compile(r"(?<!\S)<\*>(?: <\*>)+(?!\S)")  # whole tokens that are all variable, in a row
# Values repeat by shape even when they do not repeat (``blk_-1608999687919862906``, ``10.250.19.102:54106``):
# every rule above treats the digits alike — except ``0`` before ``x`` (a hex number) — so a token with
# its digits written as 1 (that ``0`` kept) is masked the same way, exactly, as long as no digit survives
# the masking. A line is put in that shape once (C calls only), and each token's mask is memoised by
# its shape: HDFS, a new token in every line, has a few dozen shapes. A shape whose mask keeps a digit
# (``en0``, ``SOCKS5``) is memoised as _KEEP: that token is masked (and memoised) as itself.
_SHAPE = bytes.maketrans(b"0123456789", b"1111111111")  # on UTF-8 bytes: 8x faster than str.translate
_SHAPE_HEX = re.compile(rb"[1-9]|0(?![xX])")
_MEMO: dict[str, str] = {}  # a token's shape -> its mask, or _KEEP
_TOKEN_MEMO: dict[str, str] = {}  # a token whose shape is _KEEP -> its mask
_MEMO_SIZE = 65_536
_KEEP = "\x00keep"


def _is_variable_piece(piece: str) -> bool:
    """A piece is a variable if it starts with a digit (after a sign) or is more than half digits."""
    if not piece or WILDCARD in piece:
        return False
    if piece in _LITERALS:
        return True
    digits = len(_DIGIT.findall(piece))
    if digits == 0:
        return False
    head = piece.lstrip("+-/.~")
    return ((bool(head) and head[0].isdigit()) or digits * 2 > len(piece)
            or (digits >= 6 and bool(_ID_DIGITS.search(piece))))


def mask_token(token: str) -> str:
    """One whitespace-free token with its variable parts replaced by ``<*>``.

    >>> mask_token("uid=1000"), mask_token("10.1.2.3:50010"), mask_token("en0:"), mask_token("/a/b/c.log")
    ('uid=<*>', '<*>:<*>', 'en0:', '<*>')
    """
    if token.isdigit():
        return WILDCARD
    if not _MAYBE_VARIABLE.search(token):
        return token
    for pattern, needs, least in _SPECIALS:
        if token.count(needs) >= least:
            token = pattern.sub(WILDCARD, token)
    # A sentence's punctuation after a token, and a number sign before it, are not part of the value.
    body = token.rstrip(".,;:!?")
    tail = token[len(body):]
    lead = "#" if body.startswith("#") and len(body) > 1 else ""
    parts = SEPARATORS.split(body[len(lead):])
    for i in range(0, len(parts), 2):  # even indices are pieces, odd ones separators
        if _is_variable_piece(parts[i]):
            parts[i] = WILDCARD
    return lead + "".join(parts) + tail



def mask_line(line: str, max_tokens: int) -> list[str]:
    """The line's tokens (split at whitespace, at most ``max_tokens``; the rest is one ``<*>``), masked,
    with runs of tokens that are nothing but variables merged into one ``<*>``."""
    key = mask_key(line, max_tokens)
    return key.split(" ") if key else []


def mask_key(line: str, max_tokens: int) -> str:
    """:func:`mask_line`'s tokens joined by one space (tokens hold no whitespace, so this is
    reversible): the miner's cache key, made without building a list of tokens twice."""
    # UTF-8 puts no byte below 0x80 in a multi-byte character: only ASCII digits change. Digits are not
    # whitespace, so the shaped line is cut into tokens at the same places as the line.
    data = line.encode("utf-8", "surrogatepass")
    data = _SHAPE_HEX.sub(b"1", data) if b"0x" in data or b"0X" in data else data.translate(_SHAPE)
    shaped = data.decode("utf-8", "surrogatepass").split(None, max_tokens)
    if len(shaped) > max_tokens:
        shaped[max_tokens] = WILDCARD
    get = _MEMO.get
    masked = [get(tok) or _mask_shape(tok) for tok in shaped]  # a masked token is never empty
    if _KEEP in masked:
        raw = line.split(None, max_tokens)
        get_token = _TOKEN_MEMO.get
        masked = [m if m != _KEEP else (get_token(tok) or _mask_token_memo(tok))
                  for m, tok in zip(masked, raw, strict=False)]
    key = " ".join(masked)
    if "<*> <*>" in key:
        key = _WILD_TOKENS.sub(WILDCARD, key)
    return key


def _mask_shape(shape: str) -> str:
    m = _mask_whole(shape)
    if _DIGIT.search(m):  # a digit kept: the shape's mask is not the token's (see _KEEP)
        m = _KEEP
    if len(_MEMO) >= _MEMO_SIZE:
        _MEMO.clear()  # bounded; what is frequent comes back at once
    _MEMO[shape] = m
    return m


def _mask_token_memo(tok: str) -> str:
    m = _mask_whole(tok)
    if len(_TOKEN_MEMO) >= _MEMO_SIZE:
        _TOKEN_MEMO.clear()
    _TOKEN_MEMO[tok] = m
    return m


def _mask_whole(tok: str) -> str:
    m = mask_token(tok)
    if m != WILDCARD and WILDCARD in m and _WILD_RUN.fullmatch(m):
        m = WILDCARD
    return m


def forget_memos() -> None:
    """Forget every memoised mask (they are shared by all miners of the process): a benchmark that
    times a cold start calls this first. Results never depend on the memos, only speed does."""
    _MEMO.clear()
    _TOKEN_MEMO.clear()


def normalise_template(template: str) -> str:
    """The form two templates are compared in (used on both sides by the benchmark): whitespace runs
    become one space, and ``<*>``s separated only by punctuation or spaces become one ``<*>``.

    >>> normalise_template("from <*>-<*>-<*> <*>:<*>  to  <*>:<*>")
    'from <*> to <*>'
    """
    return _WILD_RUN.sub(WILDCARD, _SPACE.sub(" ", template.strip()))

"""Generic masking of a log line's variable parts: the first step of template mining.

Only rules that hold for logs in general, none written for one application's logs: UUIDs, IPv4
addresses (with a port), MAC addresses, hex numbers, absolute paths, what follows a URL's scheme, and
then every piece of a token that is more than half digits or starts with one (``8080``, ``-3``,
``12ms``, ``blk_-1608999687919862906``, ``2005-06-03``), and the literals ``true``, ``false`` and
``null``. A token is cut into pieces at punctuation that separates fields (``:=,;()[]{}<>"'|@`` and
dots), so ``uid=1000`` becomes ``uid=<*>`` and ``10.1.2.3:50010`` becomes ``<*>:<*>``; a piece with a
digit in it that is mostly letters (``en0``, ``SOCKS5``, ``ipv6``) is a word and stays.

Consecutive masked tokens are merged into one ``<*>`` (a variable may span several tokens, as a date
with a time does), so one message type has one token count however its variables are written.
"""

from __future__ import annotations

import re

__all__ = ["SEPARATORS", "WILDCARD", "mask_line", "mask_token", "normalise_template"]

WILDCARD = "<*>"

# Whole-token rules, tried before the piecewise rules; each pattern matches inside a token.
_SPECIAL = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"  # UUID
    r"|(?:^/)?(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?![\w.])"  # IPv4 (with Java's "/" before it)
    r"|(?<![\w:])(?:[0-9a-fA-F]{2}:){5}[0-9a-fA-F]{2}(?![\w:])"  # MAC
    r"|\b0[xX][0-9a-fA-F]+\b"  # hex number
    r"|(?<=://)[^\s/]*\S*"  # what follows a URL's scheme (the scheme stays)
    r"|(?<![\w.])(?:/[\w.~@%+-]+){2,}/?"  # absolute path with two parts or more
)
_SPECIAL_HINT = re.compile(r"[.:/xX-]")
# Field separators inside a token: pieces between them are judged one by one.
SEPARATORS = re.compile(r"(\.+|[:=,;()\[\]{}<>\"'|@])")
_LITERALS = frozenset({"true", "false", "null", "True", "False", "NULL"})
_DIGIT = re.compile(r"\d")
_MAYBE_VARIABLE = re.compile(r"\d|/|true|false|null|True|False|NULL")
_WILD_RUN = re.compile(r"<\*>(?:[^\w<]*<\*>)+")
_SPACE = re.compile(r"\s+")
# Tokens repeat (words, and many values): masking each distinct token once makes mining about 2x faster.
_MEMO: dict[str, str] = {}
_MEMO_SIZE = 65_536


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
    return (bool(head) and head[0].isdigit()) or digits * 2 > len(piece)


def mask_token(token: str) -> str:
    """One whitespace-free token with its variable parts replaced by ``<*>``.

    >>> mask_token("uid=1000"), mask_token("10.1.2.3:50010"), mask_token("en0:"), mask_token("/a/b/c.log")
    ('uid=<*>', '<*>:<*>', 'en0:', '<*>')
    """
    if token.isdigit():
        return WILDCARD
    if not _MAYBE_VARIABLE.search(token):
        return token
    if _SPECIAL_HINT.search(token):  # every _SPECIAL pattern needs one of these characters
        token = _SPECIAL.sub(WILDCARD, token)
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
    raw = line.split(None, max_tokens)
    if len(raw) > max_tokens:
        raw[max_tokens] = WILDCARD
    memo = _MEMO
    get = memo.get
    masked = [get(tok) or _mask_new(tok) for tok in raw]  # a masked token is never empty
    if masked.count(WILDCARD) < 2:
        return masked
    out: list[str] = []
    for m in masked:
        if m == WILDCARD and out and out[-1] == WILDCARD:
            continue
        out.append(m)
    return out


def _mask_new(tok: str) -> str:
    m = mask_token(tok)
    if m != WILDCARD and WILDCARD in m and _WILD_RUN.fullmatch(m):
        m = WILDCARD
    if len(_MEMO) >= _MEMO_SIZE:
        _MEMO.clear()  # bounded; what is frequent comes back at once
    _MEMO[tok] = m
    return m


def normalise_template(template: str) -> str:
    """The form two templates are compared in (used on both sides by the benchmark): whitespace runs
    become one space, and ``<*>``s separated only by punctuation or spaces become one ``<*>``.

    >>> normalise_template("from <*>-<*>-<*> <*>:<*>  to  <*>:<*>")
    'from <*> to <*>'
    """
    return _WILD_RUN.sub(WILDCARD, _SPACE.sub(" ", template.strip()))

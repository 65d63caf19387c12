"""A streaming log template miner: each line is matched to a message type (a template) as it arrives.

How (our own design, in the family of Drain's fixed-depth tree): a line is masked
(:mod:`enmei.logs.masking`), then looked up by its exact masked form in a bounded cache; on a miss the
templates with the same token count and the same first token (or a variable first token) are compared
with it position by position; one that has a different word (letters and digits, no variable part) at
some position is never a match, and of the others the most similar one at or above ``similarity``
takes it in — the
positions where they differ become ``<*>``, piece by piece inside a token (``user=root`` and
``user=guest`` give ``user=<*>``). Otherwise the line starts a new template (drift: new message types
are found at any time, and ``Match.change`` says so).

Promises:

* **Stable ids.** A template keeps its id as it grows more general, and ids are never reused, also
  across a save and a load (:meth:`TemplateMiner.dumps` / :meth:`TemplateMiner.loads`, a versioned
  JSON document, no pickle).
* **Bounded memory.** At most ``max_templates`` templates (the least recently seen is forgotten when a
  new one would pass the bound; ``evicted`` counts them), a cache of at most ``cache_size`` lines, and a
  line is cut to ``max_line_chars`` characters and ``max_tokens`` tokens before anything else.
* **Any input.** ``bytes`` are decoded as UTF-8 with replacement; a ``str`` with lone surrogates is
  repaired the same way; binary garbage is just an odd line. Nothing a line holds raises.
"""

from __future__ import annotations

import functools
import json
from collections import OrderedDict
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, NamedTuple

from enmei.errors import EnmeiError
from enmei.logs.masking import SEPARATORS as _SEPARATORS
from enmei.logs.masking import WILDCARD, mask_key

__all__ = ["FORMAT", "VERSION", "Match", "MinerSettings", "Template", "TemplateFileError", "TemplateMiner"]

FORMAT = "enmei.logs.templates"
VERSION = 1



class TemplateFileError(EnmeiError, ValueError):
    """A saved template file cannot be read: corrupt, another format, or a version this one does not read."""

    def __init__(self, source: str, reason: str) -> None:
        self.source = source
        self.reason = reason
        super().__init__(str(self))

    def __str__(self) -> str:
        return f"cannot load log templates from {self.source}: {self.reason}"


@dataclass(frozen=True)
class MinerSettings:
    """``similarity``: the share of positions a line must have in common with a template to join it;
    ``family``: how many templates differing by one word at one place make that place a variable."""

    similarity: float = 0.5
    family: int = 5
    max_templates: int = 10_000
    cache_size: int = 100_000
    max_tokens: int = 200
    max_line_chars: int = 8_192

    def __post_init__(self) -> None:
        if not 0.0 < self.similarity <= 1.0:
            raise ValueError(f"similarity must be in (0, 1], not {self.similarity}")
        for f in ("family", "max_templates", "cache_size", "max_tokens", "max_line_chars"):
            if getattr(self, f) < 1:
                raise ValueError(f"{f} must be at least 1, not {getattr(self, f)}")


@dataclass
class Template:
    id: int
    tokens: list[str]
    count: int = 0
    text: str = field(init=False, repr=False, compare=False)
    words: list[bool] = field(init=False, repr=False, compare=False)  # per position: a word, not a variable

    def __post_init__(self) -> None:
        self.retokenise(self.tokens)

    def retokenise(self, tokens: list[str]) -> None:
        self.tokens = tokens
        self.text = " ".join(tokens)
        self.words = [_is_word(x) for x in tokens]


class Match(NamedTuple):
    """``change``: ``new`` (a template made for this line), ``grown`` (a template made more general to
    take it in) or ``none``. A named tuple: one is made per line, and a frozen dataclass costs 3x more."""

    template_id: int
    template: str
    change: Literal["new", "grown", "none"]


def _merge_token(t: str, tok: str) -> str:
    """The most specific token that covers both: equal pieces kept, different ones ``<*>``."""
    if t in (tok, WILDCARD):
        return t
    a, b = _SEPARATORS.split(t), _SEPARATORS.split(tok)
    if len(a) != len(b) or a[1::2] != b[1::2] or len(a) == 1:
        return WILDCARD
    out = [x if x == y else WILDCARD for x, y in zip(a, b, strict=True)]
    merged = "".join(out)
    return WILDCARD if merged.replace(WILDCARD, "").strip(":=,;()[]{}<>\"'|") == "" else merged


def _route(tokens: list[str]) -> str:
    """The first token as an index key; one with a variable part in it (``host:<*>``) is a variable."""
    if not tokens:
        return ""
    return WILDCARD if WILDCARD in tokens[0] else tokens[0]


@functools.lru_cache(maxsize=65_536)
def _is_word(tok: str) -> bool:
    core = tok.strip(_PUNCT).replace("_", "").replace("-", "")
    return bool(core) and core.isalnum()


_PUNCT = "\"'()[]{}<>.,;:!?=|"
_LINE_CACHE_MAX_LINE = 1_024
_LINE_CACHE_CHARS = 4_000_000  # at most ~16 MB of cached lines a miner


def _clean(line: str | bytes, max_chars: int) -> str:
    if isinstance(line, bytes):
        return line[: max_chars * 4].decode("utf-8", "replace")[:max_chars]
    line = line[:max_chars]
    if not line.isascii():
        try:
            line.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates (surrogateescape input): make it valid text
            line = line.encode("utf-8", "replace").decode("utf-8")
    return line


class TemplateMiner:
    """Streaming template mining; one instance per log stream (not thread-safe)."""

    def __init__(self, settings: MinerSettings | None = None) -> None:
        self.settings = settings or MinerSettings()
        self._templates: OrderedDict[int, Template] = OrderedDict()  # least recently seen first
        self._index: dict[tuple[int, str], list[int]] = {}
        self._cache: dict[str, int] = {}  # masked line (tokens joined by a space) -> template id
        self._lines: dict[str, int] = {}  # line as given (cleaned) -> template id
        self._line_chars = 0
        self._families: dict[tuple[str, ...], list[int]] = {}
        self._aliases: dict[int, int] = {}  # merged template id -> the id it was merged into
        self._next_id = 1
        self.evicted = 0

    # ---- matching

    def add(self, line: str | bytes) -> Match:
        """Match one line, learning from it: its template (new or grown if need be)."""
        s = self.settings
        if type(line) is str and line.isascii() and len(line) <= s.max_line_chars:
            text = line  # the usual case, without a call
        else:
            text = _clean(line, s.max_line_chars)
        tid = self._lines.get(text)
        key = None
        if tid is None:
            key = mask_key(text, s.max_tokens)
            tid = self._cache.get(key)
        if tid is not None:
            if tid in self._aliases:
                tid = self.resolve(tid)
            t = self._templates.get(tid)
            if t is not None:
                self._templates.move_to_end(tid)
                t.count += 1
                if key is not None:
                    self._remember_line(text, tid)
                return Match(tid, t.text, "none")
        if key is None:
            key = mask_key(text, s.max_tokens)
        m = self._learn(key)
        self._remember_line(text, m.template_id)
        return m

    def _remember_line(self, text: str, tid: int) -> None:
        # Many lines repeat exactly (half of Loghub-2k's lines repeat an earlier one of their set): the
        # line itself, not only its masked form, is a key. Bounded in entries and in characters.
        if len(text) > _LINE_CACHE_MAX_LINE:
            return
        if len(self._lines) >= self.settings.cache_size or self._line_chars > _LINE_CACHE_CHARS:
            self._lines.clear()
            self._line_chars = 0
        self._lines[text] = tid
        self._line_chars += len(text)

    def _learn(self, key: str) -> Match:
        """A masked line that is in no cache: the most similar template takes it in, or a new one."""
        s = self.settings
        tokens = key.split(" ") if key else []
        best, best_sim, near = self._best(tokens)
        if best is not None and best_sim >= s.similarity:
            merged = [_merge_token(a, b) for a, b in zip(best.tokens, tokens, strict=True)]
            change: Literal["grown", "none"] = "none"
            if merged != best.tokens:
                self._unindex(best)
                best.retokenise(merged)
                self._reindex(best)
                change = "grown"
            best.count += 1
            self._templates.move_to_end(best.id)
            self._remember(key, best.id)
            return Match(best.id, best.text, change)
        t = Template(self._next_id, tokens, 1)
        self._next_id += 1
        if len(self._templates) >= s.max_templates:
            _, old = self._templates.popitem(last=False)
            self._unindex(old)
            self.evicted += 1
        self._templates[t.id] = t
        self._reindex(t)
        self._remember(key, t.id)
        if near is not None:
            joined = self._join_family(near[0], t, near[1])
            if joined is not None:
                return Match(joined.id, joined.text, "grown")
        return Match(t.id, t.text, "new")

    def _join_family(self, near: Template, new: Template, at: int) -> Template | None:
        """Record that ``new`` differs from ``near`` by one word at ``at``; when ``family`` templates
        differ so, they become one (the oldest id; the others are aliases of it from then on)."""
        shape = tuple(WILDCARD if i == at else _merge_token(a, b)
                      for i, (a, b) in enumerate(zip(near.tokens, new.tokens, strict=True)))
        if len(self._families) >= self.settings.max_templates:
            self._families.clear()  # bounded: families start again (a family is a hint, not state)
        members = self._families.setdefault(shape, [])
        for tid in (near.id, new.id):
            if tid not in members:
                members.append(tid)
        members[:] = [m for m in members if m in self._templates]
        if len(members) < self.settings.family:
            return None
        keep = self._templates[min(members)]
        self._unindex(keep)
        keep.retokenise(list(shape))
        for m in members:
            if m != keep.id:
                other = self._templates.pop(m)
                self._unindex(other)
                keep.count += other.count
                if len(self._aliases) >= self.settings.max_templates:
                    del self._aliases[next(iter(self._aliases))]
                self._aliases[m] = keep.id
        self._reindex(keep)
        self._templates.move_to_end(keep.id)
        del self._families[shape]
        return keep

    def resolve(self, template_id: int) -> int:
        """The id a template id stands for now: itself, or the template it was merged into."""
        seen = 0
        while template_id in self._aliases and seen < 64:
            template_id = self._aliases[template_id]
            seen += 1
        return template_id

    def match(self, line: str | bytes) -> Match | None:
        """The template a line belongs to without learning from it, or None if none is close enough."""
        s = self.settings
        key = mask_key(_clean(line, s.max_line_chars), s.max_tokens)
        tokens = key.split(" ") if key else []
        tid = self._cache.get(key)
        if tid is not None:
            tid = self.resolve(tid)
            if tid in self._templates:
                return Match(tid, self._templates[tid].text, "none")
        best, best_sim, _ = self._best(tokens)
        if best is None or best_sim < s.similarity:
            return None
        return Match(best.id, best.text, "none")

    def _best(self, tokens: list[str]) -> tuple[Template | None, float, tuple[Template, int] | None]:
        """The most similar template without a word conflict, its similarity, and the most similar one
        with exactly one word conflict (and the conflict's position) at or above ``similarity``."""
        n = len(tokens)
        first = _route(tokens)
        cands = self._index.get((n, first), [])
        if first != WILDCARD:
            cands = cands + self._index.get((n, WILDCARD), [])
        best: Template | None = None
        best_sim, best_count = -1.0, -1
        near: tuple[Template, int] | None = None
        near_sim = -1.0
        line_words: list[bool] | None = None
        for tid in cands:
            t = self._templates[tid]
            same = words = 0
            at = -1
            for i, (a, b) in enumerate(zip(t.tokens, tokens, strict=True)):
                if a == b:
                    same += 1
                    continue
                if line_words is None:
                    line_words = [_is_word(x) for x in tokens]
                if line_words[i] and t.words[i]:
                    words += 1
                    at = i
            sim = same / n if n else 1.0
            if words:
                # Two different words at one place are two message types ("VM Started", "VM Paused"),
                # until ``family`` of them differ there only (then it is a variable, as a user name).
                if words == 1 and sim >= self.settings.similarity and sim > near_sim:
                    near, near_sim = (t, at), sim
                continue
            if sim > best_sim or (sim == best_sim and t.count > best_count):
                best, best_sim, best_count = t, sim, t.count
        return best, best_sim, near

    def _remember(self, key: str, tid: int) -> None:
        if len(self._cache) >= self.settings.cache_size:
            self._cache.clear()  # bounded; the next lines fill it again with what is current
        self._cache[key] = tid

    def _index_key(self, t: Template) -> tuple[int, str]:
        return (len(t.tokens), _route(t.tokens))

    def _unindex(self, t: Template) -> None:
        ids = self._index.get(self._index_key(t))
        if ids is not None and t.id in ids:
            ids.remove(t.id)
            if not ids:
                del self._index[self._index_key(t)]

    def _reindex(self, t: Template) -> None:
        self._index.setdefault(self._index_key(t), []).append(t.id)

    # ---- what is known

    def templates(self) -> list[Template]:
        """The templates by id."""
        return sorted(self._templates.values(), key=lambda t: t.id)

    def get(self, template_id: int) -> Template | None:
        return self._templates.get(template_id)

    # ---- persistence

    def dumps(self) -> str:
        """The miner as a JSON document (format ``enmei.logs.templates``, version 1): settings, the next
        id, and the templates from least to most recently seen."""
        return json.dumps({
            "format": FORMAT, "version": VERSION, "settings": asdict(self.settings), "next_id": self._next_id,
            "evicted": self.evicted, "aliases": [[a, b] for a, b in self._aliases.items()],
            "templates": [{"id": t.id, "tokens": t.tokens, "count": t.count} for t in self._templates.values()],
        }, ensure_ascii=False)

    @classmethod
    def loads(cls, text: str | bytes, source: str = "<string>") -> TemplateMiner:
        """A miner from :meth:`dumps`' output. Raises ``TemplateFileError`` naming ``source`` and what is
        wrong if the document is not JSON, not this format, another version, or malformed."""
        try:
            doc = json.loads(text)
        except (ValueError, UnicodeDecodeError) as exc:
            raise TemplateFileError(source, f"not JSON ({exc})") from exc
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise TemplateFileError(source, f"not a template file (format is not {FORMAT!r})")
        if doc.get("version") != VERSION:
            raise TemplateFileError(source, f"version {doc.get('version')!r}; this enmei reads version {VERSION}")
        try:
            raw: Any = doc["settings"]
            known = {f.name for f in fields(MinerSettings)}
            if not isinstance(raw, dict) or set(raw) - known:
                raise ValueError(f"settings: unknown keys {sorted(set(raw) - known) if isinstance(raw, dict) else raw}")
            miner = cls(MinerSettings(**raw))
            miner._next_id = _int(doc["next_id"], "next_id")
            miner.evicted = _int(doc.get("evicted", 0), "evicted")
            for i, pair in enumerate(doc.get("aliases", [])):
                if not isinstance(pair, list) or len(pair) != 2:
                    raise ValueError(f"aliases[{i}] is not a pair of ids")
                miner._aliases[_int(pair[0], f"aliases[{i}][0]")] = _int(pair[1], f"aliases[{i}][1]")
            seen: set[int] = set()
            for i, item in enumerate(doc["templates"]):
                tid = _int(item["id"], f"templates[{i}].id")
                tokens = item["tokens"]
                if not isinstance(tokens, list) or not all(isinstance(x, str) for x in tokens):
                    raise ValueError(f"templates[{i}].tokens is not a list of strings")
                if tid in seen or tid >= miner._next_id or tid < 1:
                    raise ValueError(f"templates[{i}].id {tid} is repeated or not below next_id")
                seen.add(tid)
                t = Template(tid, tokens, _int(item.get("count", 0), f"templates[{i}].count"))
                miner._templates[tid] = t
                miner._reindex(t)
        except (KeyError, TypeError, ValueError) as exc:
            raise TemplateFileError(source, f"malformed ({type(exc).__name__}: {exc})") from exc
        return miner

    def save(self, path: Path) -> None:
        """Write the miner to ``path`` atomically (the old file or the new one survives a crash)."""
        from enmei.fsafe import write_atomic

        write_atomic(Path(path), self.dumps().encode(), what="log templates")

    @classmethod
    def load(cls, path: Path) -> TemplateMiner:
        """A miner from a file :meth:`save` wrote; ``TemplateFileError`` (naming the file) if unreadable."""
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise TemplateFileError(str(path), exc.strerror or str(exc)) from exc
        return cls.loads(data, str(path))


def _int(v: object, what: str) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or v < 0:
        raise ValueError(f"{what} is not a non-negative integer: {v!r}")
    return v

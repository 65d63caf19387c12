"""Performance-anomaly signatures from logs: windows of lines → template-frequency ratios → a small
neural network (a multilayer perceptron trained by backpropagation) → a named class, or ``unknown``.

A signature file is a versioned JSON document (``format: enmei.logs.signatures``, ``version: 1``; no
pickle) holding what another user of the same application needs to recognise the same classes:

* ``vocabulary``: the template *texts* the model's inputs stand for, so that it is mapped by text, not by
  one host's template ids: :meth:`Signature.miner` makes a miner that knows these templates first;
* ``classes`` with a remedy hint each, and the network's weights (ReLU hidden layers, softmax output),
  evaluated here with numpy — scikit-learn is needed only to train (the ``bench`` extra);
* ``min_p``: below this top probability a window is ``unknown``; ``max_novel``: a window whose share of
  lines that match no known template is above this is ``unknown`` too (a new mix of messages).

Loading a corrupt file, another format or version, or weights that do not fit the vocabulary raises
``SignatureFileError`` naming the file and the problem.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from enmei.errors import EnmeiError
from enmei.logs.miner import TemplateMiner

__all__ = ["FORMAT", "UNKNOWN", "VERSION", "Prediction", "Signature", "SignatureFileError", "train", "windows"]

FORMAT = "enmei.logs.signatures"
VERSION = 1
UNKNOWN = "unknown"
_L = TypeVar("_L", str, bytes)


class SignatureFileError(EnmeiError, ValueError):
    """A signature file cannot be used: corrupt, another format or version, or inconsistent."""

    def __init__(self, source: str, reason: str) -> None:
        self.source = source
        self.reason = reason
        super().__init__(str(self))

    def __str__(self) -> str:
        return f"cannot load signatures from {self.source}: {self.reason}"


@dataclass(frozen=True)
class Prediction:
    """``label``: a class name or ``unknown``; ``p``: the network's probability of its top class;
    ``novel``: the share of the window's lines that matched no template of the vocabulary."""

    label: str
    p: float
    novel: float
    top: str


def windows(lines: Sequence[_L], size: int) -> list[list[_L]]:
    """Consecutive windows of ``size`` lines (the last, shorter one kept if at least half full)."""
    if size < 1:
        raise ValueError("window size must be at least 1")
    out = [list(lines[i:i + size]) for i in range(0, len(lines), size)]
    if out and len(out[-1]) * 2 < size and len(out) > 1:
        out.pop()
    return out


@dataclass
class Signature:
    application: str
    vocabulary: list[str]
    classes: list[str]
    remedies: dict[str, str]
    layers: list[tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]]
    window: int
    min_p: float = 0.8
    max_novel: float = 0.2
    meta: dict[str, Any] = field(default_factory=dict)

    def miner(self) -> tuple[TemplateMiner, dict[int, int]]:
        """A fresh miner that knows the vocabulary's templates first, and template id → input index."""
        m = TemplateMiner()
        index: dict[int, int] = {}
        for i, text in enumerate(self.vocabulary):
            index.setdefault(m.add(text).template_id, i)
        return m, index

    def vector(self, window: Iterable[str | bytes], miner: TemplateMiner, index: dict[int, int]
               ) -> tuple[np.ndarray[Any, Any], float]:
        """The window's template-frequency ratios over the vocabulary, and its share of novel lines.
        ``miner`` learns from the lines (new templates are novel, never inputs)."""
        v = np.zeros(len(self.vocabulary))
        n = novel = 0
        for line in window:
            n += 1
            i = index.get(miner.resolve(miner.add(line).template_id))
            if i is None:
                novel += 1
            else:
                v[i] += 1
        return (v / n if n else v), (novel / n if n else 0.0)

    def probabilities(self, x: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        h = x
        for k, (w, b) in enumerate(self.layers):
            h = h @ w + b
            if k < len(self.layers) - 1:
                h = np.maximum(h, 0.0)
        if len(self.classes) == 2 and h.shape[-1] == 1:  # scikit-learn's binary case: one logistic output
            p1 = 1.0 / (1.0 + np.exp(-h[..., 0]))
            return np.stack([1.0 - p1, p1], axis=-1)
        e = np.exp(h - h.max(axis=-1, keepdims=True))
        return np.asarray(e / e.sum(axis=-1, keepdims=True))

    def predict(self, window: Iterable[str | bytes], miner: TemplateMiner, index: dict[int, int]) -> Prediction:
        x, novel = self.vector(window, miner, index)
        return self.judge(x, novel)

    def judge(self, x: np.ndarray[Any, Any], novel: float, min_p: float | None = None) -> Prediction:
        """The prediction for a window's ratio vector ``x`` and novel share: its top class if the
        network gives it at least ``min_p`` (default: the signature's) and no more than ``max_novel``
        of the lines were novel, else ``unknown``."""
        p = self.probabilities(x)
        k = int(np.argmax(p))
        top, pk = self.classes[k], float(p[k])
        floor = self.min_p if min_p is None else min_p
        label = top if pk >= floor and novel <= self.max_novel else UNKNOWN
        return Prediction(label, round(pk, 4), round(novel, 4), top)

    # ---- the file

    def dumps(self) -> str:
        return json.dumps({
            "format": FORMAT, "version": VERSION, "application": self.application, "window": self.window,
            "min_p": self.min_p, "max_novel": self.max_novel, "vocabulary": self.vocabulary,
            "classes": [{"name": c, "remedy": self.remedies.get(c, "")} for c in self.classes],
            "model": {"activation": "relu", "layers": [{"weights": w.tolist(), "bias": b.tolist()}
                                                       for w, b in self.layers]},
            "meta": self.meta,
        }, ensure_ascii=False)

    @classmethod
    def loads(cls, text: str | bytes, source: str = "<string>") -> Signature:
        try:
            doc = json.loads(text)
        except (ValueError, UnicodeDecodeError) as exc:
            raise SignatureFileError(source, f"not JSON ({exc})") from exc
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise SignatureFileError(source, f"not a signature file (format is not {FORMAT!r})")
        if doc.get("version") != VERSION:
            raise SignatureFileError(source, f"version {doc.get('version')!r}; this enmei reads version {VERSION}")
        try:
            vocab = doc["vocabulary"]
            if not isinstance(vocab, list) or not all(isinstance(v, str) for v in vocab):
                raise ValueError("vocabulary is not a list of strings")
            classes = [str(c["name"]) for c in doc["classes"]]
            remedies = {str(c["name"]): str(c.get("remedy", "")) for c in doc["classes"]}
            layers = [(np.asarray(lay["weights"], dtype=float), np.asarray(lay["bias"], dtype=float))
                      for lay in doc["model"]["layers"]]
            width = len(vocab)
            for k, (w, b) in enumerate(layers):
                if w.ndim != 2 or w.shape[0] != width or b.shape != (w.shape[1],):
                    raise ValueError(f"layer {k} has shape {w.shape} / {b.shape}, expected {width} inputs")
                if not np.isfinite(w).all() or not np.isfinite(b).all():
                    raise ValueError(f"layer {k} holds a non-finite weight")
                width = w.shape[1]
            if not layers or width != (1 if len(classes) == 2 else len(classes)) or len(set(classes)) != len(classes):
                raise ValueError(f"the output layer has {width} units for {len(classes)} distinct classes")
            min_p, max_novel, window = float(doc["min_p"]), float(doc["max_novel"]), int(doc["window"])
            if not (0.0 <= min_p <= 1.0 and 0.0 <= max_novel <= 1.0 and window >= 1) or math.isnan(min_p):
                raise ValueError("min_p and max_novel must be in [0, 1] and window at least 1")
            meta = doc.get("meta", {})
            return cls(str(doc["application"]), vocab, classes, remedies, layers, window, min_p, max_novel,
                       meta if isinstance(meta, dict) else {})
        except (KeyError, TypeError, ValueError) as exc:
            raise SignatureFileError(source, f"malformed ({type(exc).__name__}: {exc})") from exc

    def save(self, path: Path) -> None:
        from enmei.fsafe import write_atomic

        write_atomic(Path(path), self.dumps().encode(), what="signatures")

    @classmethod
    def load(cls, path: Path) -> Signature:
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise SignatureFileError(str(path), exc.strerror or str(exc)) from exc
        return cls.loads(data, str(path))


def train(labelled: Sequence[tuple[str, Sequence[str]]], *, application: str, window: int = 50,
          remedies: dict[str, str] | None = None, hidden: tuple[int, ...] = (32,), seed: int = 0,
          min_p: float = 0.8, max_novel: float = 0.2) -> Signature:
    """A signature from ``(class name, log lines)`` pairs (each cut into windows of ``window`` lines).
    Needs scikit-learn (``pip install enmei[bench]``); ``ValueError`` if fewer than two classes."""
    from sklearn.neural_network import MLPClassifier  # type: ignore[import-untyped]

    names = sorted({name for name, _ in labelled})
    if len(names) < 2:
        raise ValueError(f"training needs at least two classes (normal and one anomaly), got {names}")
    miner = TemplateMiner()
    raw: list[tuple[str, list[int]]] = []
    for name, lines in labelled:
        for w in windows(lines, window):
            raw.append((name, [miner.add(line).template_id for line in w]))
    vocab_ids = [t.id for t in miner.templates()]
    vocab = [t.text for t in miner.templates()]
    pos = {tid: i for i, tid in enumerate(vocab_ids)}
    x = np.zeros((len(raw), len(vocab)))
    for r, (_, ids) in enumerate(raw):
        for tid in ids:
            x[r, pos[miner.resolve(tid)]] += 1
        x[r] /= max(1, len(ids))
    y = [name for name, _ in raw]
    t0 = time.perf_counter()
    clf = MLPClassifier(hidden_layer_sizes=hidden, max_iter=2000, random_state=seed).fit(x, y)
    layers = [(np.asarray(w, dtype=float), np.asarray(b, dtype=float))
              for w, b in zip(clf.coefs_, clf.intercepts_, strict=True)]
    return Signature(application, vocab, [str(c) for c in clf.classes_], dict(remedies or {}), layers, window,
                     min_p, max_novel, {"windows": len(raw), "train_s": round(time.perf_counter() - t0, 3),
                                        "trained_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})

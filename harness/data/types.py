"""Plain data containers: :class:`Datum` (one labelled image) and :class:`DatasetSplits`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Datum:
    """One labelled image.

    ``impath`` is an absolute path, ``label`` a 0-based class index, ``classname`` the class name
    exactly as stored by the split (underscores are only turned into spaces when prompts are
    built) and ``domain`` is always 0 for the datasets of this benchmark.
    """

    impath: str
    label: int
    classname: str
    domain: int = 0


def derive_classnames(items: list[Datum]) -> tuple:
    """Class names and class count derived from a (training) list, PROTOCOL.md 3.3 / 4.1.

    For each label present, in ascending label order, the class name attached to its items; the
    class count is ``max(label) + 1``.  (A label with no item is simply absent from the name
    list, exactly as in the published code.)
    """
    lab2cname: dict[int, str] = {}
    for d in items:
        lab2cname.setdefault(d.label, d.classname)
    labels = sorted(lab2cname)
    classnames = [lab2cname[lab] for lab in labels]
    num_classes = (max(labels) + 1) if labels else 0
    return classnames, num_classes, lab2cname


@dataclass
class DatasetSplits:
    """The result of :func:`harness.data.build_dataset`.

    ``train``/``val``/``test`` are lists of :class:`Datum` in split-file order (after few-shot
    sampling and base/new subsampling).  ``classnames`` and ``num_classes`` are derived from the
    final training list.  ``fewshot_source`` tells where the few-shot sample came from:
    ``"drawn"`` (sampled now and cached), ``"cache"`` (our JSON cache), ``"authors-pkl"`` (an
    existing ``shot_K-seed_S.pkl`` of the authors' code) or ``None`` (no sampling).
    """

    name: str
    train: list[Datum]
    val: list[Datum]
    test: list[Datum]
    classnames: list[str] = field(default_factory=list)
    num_classes: int = 0
    lab2cname: dict[int, str] = field(default_factory=dict)
    root: str = ""
    dataset_dir: str = ""
    num_shots: int = 0
    seed: int = 1
    subsample: str = "all"
    fewshot_cache: str | None = None
    fewshot_source: str | None = None
    info: Any = None

    @classmethod
    def from_lists(cls, name: str, train, val, test, **kw) -> DatasetSplits:
        classnames, num_classes, lab2cname = derive_classnames(train)
        return cls(
            name=name,
            train=list(train),
            val=list(val),
            test=list(test),
            classnames=classnames,
            num_classes=num_classes,
            lab2cname=lab2cname,
            **kw,
        )

    @property
    def paper_name(self) -> str:
        return getattr(self.info, "paper_name", self.name)

    def __repr__(self) -> str:
        return (
            f"DatasetSplits(name={self.name!r}, train={len(self.train)}, val={len(self.val)}, "
            f"test={len(self.test)}, num_classes={self.num_classes}, num_shots={self.num_shots}, "
            f"seed={self.seed}, subsample={self.subsample!r})"
        )

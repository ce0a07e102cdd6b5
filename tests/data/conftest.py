import pytest

from medmap.data import io as mio


@pytest.fixture
def count_reads(monkeypatch):
    """Counts raw-volume decodes (the preprocessor reads through medmap.data.io.read_volume,
    remembering the last files in io._RECENT, which starts empty here)."""
    calls = []
    real = mio.read_volume

    def counting(path, *args):
        calls.append(str(path))
        return real(path, *args)

    monkeypatch.setattr(mio, "read_volume", counting)
    monkeypatch.setattr(mio, "_RECENT", type(mio._RECENT)())
    return calls

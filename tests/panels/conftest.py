import pytest


@pytest.fixture(autouse=True)
def in_tmp(tmp_path, monkeypatch):
    """Panels autosave and write runs relative to the working folder: keep each test's files apart."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FTNB_DEFAULT_MODEL", "tiny")


@pytest.fixture
def small_examples(qa_data):
    return qa_data

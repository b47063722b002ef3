"""key_match.check_cached: the doit key check skips loading keys only for inputs it saw pass."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from projects import ecc_keys, make_project

from imgtool.config import load_config
from imgtool.keys import key_match


def _count_checks(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    real = key_match.check

    def counting(cfg: object, allow: bool = False) -> list[key_match.Mismatch]:
        calls.append(1)
        return real(cfg, allow)  # type: ignore[arg-type]

    monkeypatch.setattr(key_match, "check", counting)
    return calls


def test_pass_is_cached_until_an_input_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    prj = make_project(tmp_path, sample_bundle=True)
    cache = tmp_path / "out" / "keycheck.json"
    calls = _count_checks(monkeypatch)

    def run() -> list[key_match.Mismatch]:
        cfg = load_config(prj.cfg, key_dir=prj.keys, prebuilt_dir=prj.prebuilt)
        return key_match.check_cached(cfg, cache)

    assert run() == [] and run() == [] and len(calls) == 1  # the second run read no key
    bundle = prj.prebuilt / "caliptra-fw.bin"
    os.utime(bundle, ns=(0, bundle.stat().st_mtime_ns + 1))  # same bytes, new stat
    assert run() == [] and len(calls) == 2
    other = tmp_path / "other"
    ecc_keys(other)
    (prj.keys / "own-fw-ecc-pubk.pem").write_bytes((other / "own-fw-ecc-pubk.pem").read_bytes())
    for _ in range(2):  # a mismatch is never recorded as a pass
        with pytest.raises(key_match.KeyMismatchError):
            run()
    assert len(calls) == 4


def test_allow_is_part_of_the_key_and_a_bad_cache_is_ignored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    prj = make_project(tmp_path, sample_bundle=True)
    cache = tmp_path / "keycheck.json"
    cache.write_text("{not json")
    calls = _count_checks(monkeypatch)
    cfg = load_config(prj.cfg, key_dir=prj.keys, prebuilt_dir=prj.prebuilt)
    assert key_match.check_cached(cfg, cache) == [] and len(calls) == 1
    assert key_match.check_cached(cfg, cache, allow=True) == [] and len(calls) == 2

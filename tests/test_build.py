"""The build's choices that tests can reach without rebuilding: how setup.py
finds OpenMP for the compiler it builds with (tools/build_env.openmp_flags)."""
import os
import shutil
import stat
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tools import build_env  # noqa: E402

TORCH_DIR = "/nonexistent/site-packages/torch"


def _fake_compiler(tmp_path, exit_code, message=""):
    """A compiler that records each command line and exits with exit_code."""
    log = tmp_path / "calls.txt"
    script = tmp_path / "fakecxx"
    script.write_text(f'#!/bin/sh\necho "$@" >> "{log}"\necho "{message}" >&2\nexit {exit_code}\n')
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return str(script), log


@pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++")
def test_gcc_takes_fopenmp(monkeypatch):
    monkeypatch.setenv("CXX", "g++")
    monkeypatch.delenv("FUSED_ATTN_OPENMP", raising=False)
    assert build_env.openmp_flags(TORCH_DIR) == (["-fopenmp"], ["-fopenmp"], "")


def test_a_compiler_without_openmp_builds_without_it_and_says_why(monkeypatch, tmp_path):
    cxx, log = _fake_compiler(tmp_path, 1, "probe.cpp:2:10: fatal error: 'omp.h' file not found")
    monkeypatch.setenv("CXX", cxx)
    monkeypatch.delenv("FUSED_ATTN_OPENMP", raising=False)
    monkeypatch.setattr(sys, "platform", "linux")
    cflags, lflags, why = build_env.openmp_flags(TORCH_DIR)
    assert (cflags, lflags) == ([], [])
    assert "cannot build OpenMP" in why and "'omp.h' file not found" in why
    assert len(log.read_text().splitlines()) == 1  # -fopenmp tried once


def test_macos_tries_torchs_own_libomp_first(monkeypatch, tmp_path):
    cxx, log = _fake_compiler(tmp_path, 0)
    monkeypatch.setenv("CXX", cxx)
    monkeypatch.delenv("FUSED_ATTN_OPENMP", raising=False)
    monkeypatch.setattr(sys, "platform", "darwin")
    cflags, lflags, why = build_env.openmp_flags(TORCH_DIR)
    assert why == ""
    assert cflags == ["-Xpreprocessor", "-fopenmp", f"-I{TORCH_DIR}/include"]
    assert f"-L{TORCH_DIR}/lib" in lflags and "-lomp" in lflags
    calls = log.read_text().splitlines()
    assert len(calls) == 1 and "-Xpreprocessor -fopenmp" in calls[0] and "-shared" in calls[0]


def test_macos_falls_back_to_fopenmp(monkeypatch, tmp_path):
    # Fails unless given -fopenmp alone, as a Clang with its own runtime would.
    log = tmp_path / "calls.txt"
    script = tmp_path / "fakecxx"
    script.write_text(f'#!/bin/sh\necho "$@" >> "{log}"\ncase "$*" in *Xpreprocessor*) exit 1;; esac\nexit 0\n')
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("CXX", str(script))
    monkeypatch.delenv("FUSED_ATTN_OPENMP", raising=False)
    monkeypatch.setattr(sys, "platform", "darwin")
    assert build_env.openmp_flags(TORCH_DIR) == (["-fopenmp"], ["-fopenmp"], "")
    assert len(log.read_text().splitlines()) == 2


def test_openmp_can_be_turned_off(monkeypatch, tmp_path):
    cxx, log = _fake_compiler(tmp_path, 0)
    monkeypatch.setenv("CXX", cxx)
    monkeypatch.setenv("FUSED_ATTN_OPENMP", "0")
    assert build_env.openmp_flags(TORCH_DIR) == ([], [], "FUSED_ATTN_OPENMP=0")
    assert not log.exists()

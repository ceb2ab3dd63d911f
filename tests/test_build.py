"""The build's choices that tests can reach without rebuilding: how setup.py
finds OpenMP for the compiler it builds with (tools/build_env.openmp_flags)."""
import os
import stat
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tools import build_env  # noqa: E402


def _fake_compiler(tmp_path, body='exit 0'):
    """A compiler that records each command line, then runs body (sh)."""
    log = tmp_path / "calls.txt"
    script = tmp_path / "fakecxx"
    script.write_text(f'#!/bin/sh\necho "$@" >> "{log}"\n{body}\n')
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return str(script), log


def _torch_dir(tmp_path, libomp):
    """A torch package directory, with or without the libomp.dylib of macOS wheels."""
    d = tmp_path / "torch"
    (d / "lib").mkdir(parents=True)
    (d / "include").mkdir()
    if libomp:
        (d / "lib" / "libomp.dylib").write_bytes(b"")
    return str(d)


@pytest.fixture
def env(monkeypatch):
    monkeypatch.delenv("FUSED_ATTN_OPENMP", raising=False)
    return monkeypatch


@pytest.mark.skipif(not build_env.compiler_is_gcc("g++"), reason="needs GCC as g++")
def test_gcc_takes_fopenmp(env, tmp_path):
    env.setenv("CXX", "g++")
    env.setattr(sys, "platform", "linux")
    assert build_env.openmp_flags(_torch_dir(tmp_path, False)) == (["-fopenmp"], ["-fopenmp"], "")


def test_a_compiler_without_openmp_builds_without_it_and_says_why(env, tmp_path):
    cxx, log = _fake_compiler(tmp_path, "echo \"probe.cpp:2:10: fatal error: 'omp.h' file not found\" >&2; exit 1")
    env.setenv("CXX", cxx)
    env.setattr(sys, "platform", "linux")
    cflags, lflags, why = build_env.openmp_flags(_torch_dir(tmp_path, False))
    assert (cflags, lflags) == ([], [])
    assert "cannot build OpenMP" in why and "'omp.h' file not found" in why
    assert len(log.read_text().splitlines()) == 1  # -fopenmp's compile, no link


def test_compile_and_link_are_separate_steps_as_in_the_build(env, tmp_path):
    cxx, log = _fake_compiler(tmp_path)
    env.setenv("CXX", cxx)
    env.setattr(sys, "platform", "linux")
    assert build_env.openmp_flags(_torch_dir(tmp_path, False)) == (["-fopenmp"], ["-fopenmp"], "")
    compile_, link = log.read_text().splitlines()
    assert "-c" in compile_.split() and "-fopenmp" in compile_.split()
    assert "-shared" in link.split() and "-fopenmp" in link.split() and "-c" not in link.split()


def test_macos_links_torchs_own_libomp_with_apple_clangs_flags_first(env, tmp_path):
    cxx, log = _fake_compiler(tmp_path)
    env.setenv("CXX", cxx)
    env.setattr(sys, "platform", "darwin")
    tdir = _torch_dir(tmp_path, True)
    cflags, lflags, why = build_env.openmp_flags(tdir)
    assert why == ""
    assert cflags == ["-Xpreprocessor", "-fopenmp", f"-I{tdir}/include"]
    assert lflags == [f"-L{tdir}/lib", "-lomp", f"-Wl,-rpath,{tdir}/lib"]
    assert len(log.read_text().splitlines()) == 2


def test_macos_clang_with_its_own_omp_h_still_links_torchs_libomp(env, tmp_path):
    # Rejects -Xpreprocessor (as no real compiler does; it stands for a
    # failure with torch's omp.h), takes -fopenmp, as Homebrew's Clang would.
    cxx, log = _fake_compiler(tmp_path, 'case "$*" in *Xpreprocessor*) exit 1;; esac\nexit 0')
    env.setenv("CXX", cxx)
    env.setattr(sys, "platform", "darwin")
    tdir = _torch_dir(tmp_path, True)
    cflags, lflags, why = build_env.openmp_flags(tdir)
    assert (cflags, why) == (["-fopenmp"], "")
    # never the compiler's own runtime: a second libomp aborts the process
    assert "-fopenmp" not in lflags and f"-L{tdir}/lib" in lflags and "-lomp" in lflags


def test_macos_torch_without_libomp_takes_the_compilers_openmp(env, tmp_path):
    cxx, log = _fake_compiler(tmp_path)
    env.setenv("CXX", cxx)
    env.setattr(sys, "platform", "darwin")
    assert build_env.openmp_flags(_torch_dir(tmp_path, False)) == (["-fopenmp"], ["-fopenmp"], "")


@pytest.mark.parametrize("value", ["0", "off", "False"])
def test_openmp_can_be_turned_off(env, tmp_path, value):
    cxx, log = _fake_compiler(tmp_path)
    env.setenv("CXX", cxx)
    env.setenv("FUSED_ATTN_OPENMP", value)
    assert build_env.openmp_flags(_torch_dir(tmp_path, False)) == ([], [], "FUSED_ATTN_OPENMP=0")
    assert not log.exists()


def _tracked(root):
    import subprocess

    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=root, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    return [p for p in out.decode().split("\0") if p]


def _package_version(root):
    """fused_attn.__version__, read as setuptools reads it (the package is not imported)."""
    import ast
    with open(os.path.join(root, "fused_attn", "__init__.py"), encoding="utf-8") as f:
        tree = ast.parse(f.read())
    return next(ast.literal_eval(n.value) for n in tree.body if isinstance(n, ast.Assign)
                and any(getattr(t, "id", None) == "__version__" for t in n.targets))


def test_sdist_holds_what_the_build_reads(tmp_path):
    """`python -m build` (and pip given the .tar.gz) builds the wheel from the
    sdist, not from the tree. setuptools alone packs only the .cpp/.cu files
    of the extension it would build where the sdist is made: no headers, and
    not tools/build_env.py, which setup.py imports (MANIFEST.in adds them).
    Made where the CUDA sources are not built (FUSED_ATTN_NO_CUDA=1), the
    case that left out the most."""
    import subprocess
    import tarfile

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    files = _tracked(root)
    if files is None:
        pytest.skip("needs a git checkout (the tracked files are what the sdist must hold)")
    src = tmp_path / "src"
    for rel in files:  # a copy, so the sdist's egg-info is not written into the checkout
        dst = src / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        with open(os.path.join(root, rel), "rb") as f:
            dst.write_bytes(f.read())
    env = dict(os.environ, FUSED_ATTN_NO_CUDA="1")
    code = ("import sys; from setuptools import build_meta; "
            "print(build_meta.build_sdist(sys.argv[1]))")
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path / "dist")], cwd=src, env=env,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    name = r.stdout.strip().splitlines()[-1]
    with tarfile.open(tmp_path / "dist" / name) as tar:
        top = tar.getnames()[0].split("/")[0]
        packed = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
        # filter="data" where this Python has it (3.12, and 3.10.12 / 3.11.4 on)
        kw = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        tar.extractall(tmp_path / "unpacked", **kw)
    needed = [p for p in files if p.startswith("csrc/")] + ["tools/build_env.py", "CMakeLists.txt", "setup.py",
                                                            "fused_attn/py.typed", "fused_attn/_C.pyi"]
    missing = [p for p in needed if p not in packed]
    assert not missing, f"the sdist lacks {missing}"
    # setup.py runs there: imports tools.build_env, finds the sources.
    r = subprocess.run([sys.executable, "setup.py", "--name", "--version"], cwd=tmp_path / "unpacked" / top,
                       env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    # The package's one version (pyproject.toml takes fused_attn.__version__).
    assert r.stdout.strip().splitlines()[-2:] == ["fused_attn", _package_version(root)], r.stdout

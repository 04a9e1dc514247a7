"""jackpot_jax.kernels.native: how the C++ handlers are built, cached, shared and refused."""

import json
import os
import subprocess
import sys
import time

import pytest
from pipeline_helpers import ROOT, python_script

from jackpot_jax.kernels import native
from jackpot_jax.kernels.native import onednn

needs_compiler = pytest.mark.skipif(native.compiler() is None, reason="no C++ compiler")

KEY = dict(
    jaxlib_version="0.10.2", compiler_version="g++ (Debian 12.2.0-14) 12.2.0", machine="x86_64"
)


def test_cache_key_names_the_toolchain_the_machine_and_the_extras():
    base = native.cache_key(b"src", ["g++", "-O3"], **KEY)
    assert base == native.cache_key(b"src", ["g++", "-O3"], **KEY)  # stable
    assert len(base) == 16 and int(base, 16) >= 0
    changed = [
        native.cache_key(b"src2", ["g++", "-O3"], **KEY),
        native.cache_key(b"src", ["g++", "-O2"], **KEY),
        native.cache_key(b"src", ["g++", "-O3"], **{**KEY, "jaxlib_version": "0.10.3"}),
        native.cache_key(
            b"src", ["g++", "-O3"], **{**KEY, "compiler_version": "g++ (Debian 13.1.0-1) 13.1.0"}
        ),
        native.cache_key(b"src", ["g++", "-O3"], **{**KEY, "machine": "aarch64"}),
        native.cache_key(b"src", ["g++", "-O3"], **KEY, extra=["oneDNN headers 3.2.0"]),
        native.cache_key(b"src", ["g++", "-O3"], **KEY, extra=["oneDNN headers 3.3.0"]),
    ]
    assert len({base, *changed}) == len(changed) + 1


def test_compiler_version_is_the_first_line(tmp_path):
    fake = tmp_path / "fakecxx"
    fake.write_text("#!/bin/sh\necho 'fakecxx (Build 7) 1.2.3'\necho 'Copyright nobody'\n")
    fake.chmod(0o755)
    assert native.compiler_version(str(fake)) == "fakecxx (Build 7) 1.2.3"
    assert native.compiler_version(str(tmp_path / "missing")) == ""


def _warnings_script(body: str) -> str:
    """A script that runs ``body`` and prints the FallbackWarnings it raised, as JSON."""
    return (
        "import json, warnings\n"
        "warnings.simplefilter('always')\n"  # a repeated warning would show again
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        + "".join(f"    {line}\n" for line in body.splitlines())
        + "from jackpot_jax.kernels.native import FallbackWarning\n"
        "print(json.dumps([str(w.message) for w in caught "
        "if issubclass(w.category, FallbackWarning)]))\n"
    )


_MANY_USES = """\
import jax, jax.numpy as jnp
from jackpot_jax import kernels, method as jm
from jackpot_jax.kernels.native import onednn, topk_select
for _ in range(3):
    print(topk_select.available(), onednn.available(), kernels.describe_masks())
    print(kernels.describe_convolutions())
with kernels.use(conv_impl='explicit'):
    x, w = jnp.ones((1, 5, 5, 2)), jnp.ones((3, 3, 2, 2))
    jax.jit(lambda x, w: kernels.conv2d(x, w, (1, 1), ((1, 1), (1, 1))))(x, w)
jax.jit(lambda s: jm.masks_from_scores(s, {'a': 3}))({'a': jnp.ones((4, 5))})
print('reason', topk_select.unavailable_reason())
"""


def test_a_failed_build_is_announced_once(tmp_path):
    # CXX=false: every compile fails. Each handler says so once, with the reason, however often
    # it is asked for; the package then computes without it.
    proc = python_script(
        _warnings_script(_MANY_USES),
        env_update={"CXX": "false", "XDG_CACHE_HOME": str(tmp_path / "cache")},
    )
    assert proc.returncode == 0, proc.stderr
    messages = json.loads(proc.stdout.splitlines()[-1])
    topk = [m for m in messages if "native top-k select unavailable" in m]
    assert len(topk) == 1, messages
    assert "compiling" in topk[0] and "topk_select.cc failed" in topk[0], topk
    assert "masks use the counting search" in topk[0]
    assert "masks: 32-pass counting search per layer (cpu; native: native top-k" in proc.stdout
    dnnl = [m for m in messages if "oneDNN handler unavailable" in m]
    if onednn.find_onednn() is not None:  # installed: its failed build is announced too
        assert len(dnnl) == 1 and "onednn_conv.cc failed" in dnnl[0], messages
        assert (
            "convolutions: XLA's (cpu, float32; oneDNN: oneDNN handler unavailable" in proc.stdout
        )
    assert len(messages) == len(topk) + len(dnnl), messages


_AUTO_USES = """\
import jax, jax.numpy as jnp
from jackpot_jax import kernels, method as jm
for _ in range(3):
    print(kernels.describe_masks())
    print(kernels.describe_convolutions())
with kernels.use(conv_impl='explicit'):
    x, w = jnp.ones((1, 5, 5, 2)), jnp.ones((3, 3, 2, 2))
    jax.jit(lambda x, w: kernels.conv2d(x, w, (1, 1), ((1, 1), (1, 1))))(x, w)
jax.jit(lambda s: jm.masks_from_scores(s, {'a': 3}))({'a': jnp.ones((4, 5))})
"""


def test_opting_out_is_not_announced(tmp_path):
    # The opt-outs choose what 'auto' means, so what a step does with the default options
    # (describe, trace convolutions and masks) never tries the failing compiler.
    proc = python_script(
        _warnings_script(_AUTO_USES),
        env_update={
            "CXX": "false",
            "XDG_CACHE_HOME": str(tmp_path / "cache"),
            "JACKPOT_JAX_TOPK_SELECT": "0",
            "JACKPOT_JAX_ONEDNN": "0",
        },
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.splitlines()[-1]) == []
    assert "native: JACKPOT_JAX_TOPK_SELECT=0" in proc.stdout
    assert "oneDNN: JACKPOT_JAX_ONEDNN=0" in proc.stdout


@needs_compiler
def test_concurrent_first_builds_compile_once(tmp_path):
    # Three processes want the top-k handler at once, with an empty cache: one compiles (the
    # compiler wrapper logs each compile and takes 2 s longer, so the others arrive while it
    # runs), the others wait for its lock and load what it wrote.
    log = tmp_path / "compiles.log"
    wrapper = tmp_path / "cxx"
    wrapper.write_text(
        "#!/bin/sh\n"
        f'case " $* " in *" -shared "*) echo "$$" >> {log}; sleep 2;; esac\n'
        f'exec {native.compiler()} "$@"\n'
    )
    wrapper.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(
        CXX=str(wrapper),
        XDG_CACHE_HOME=str(tmp_path / "cache"),
        PYTHONPATH=ROOT + os.pathsep + env.get("PYTHONPATH", ""),
    )
    script = (
        "from jackpot_jax.kernels.native import topk_select\n"
        "print(topk_select.available(), topk_select._library.path, "
        "topk_select.unavailable_reason())\n"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err
    lines = [out.split() for out, _ in outs]
    assert all(line[0] == "True" for line in lines), outs
    assert len({line[1] for line in lines}) == 1  # one library, in the cache
    assert lines[0][1].startswith(str(tmp_path / "cache" / "jackpot_jax"))
    assert len(log.read_text().split()) == 1, log.read_text()


@needs_compiler
def test_an_unwritable_cache_falls_back_to_a_private_directory(tmp_path):
    # The cache directory lies under a regular file, so it cannot be made (even by root): the
    # handler is built in a private temporary directory instead of being switched off, and
    # that directory is gone when the process ends.
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    proc = python_script(
        _warnings_script(
            "from jackpot_jax.kernels.native import topk_select\n"
            "print(topk_select.available(), topk_select._library.path)\n"
        ),
        env_update={"XDG_CACHE_HOME": str(blocker / "x")},
    )
    assert proc.returncode == 0, proc.stderr
    available, path = proc.stdout.splitlines()[0].split()
    assert available == "True"
    assert os.path.basename(os.path.dirname(path)).startswith("jackpot_jax_native_"), path
    assert not path.startswith(str(blocker))
    messages = json.loads(proc.stdout.splitlines()[-1])
    assert len(messages) == 1 and "cache directory cannot hold compiled handlers" in messages[0]
    assert str(blocker / "x") in messages[0] and os.path.dirname(path) in messages[0]
    assert not os.path.exists(os.path.dirname(path))


def test_a_hung_compile_is_killed_at_the_build_timeout(tmp_path, monkeypatch):
    # The compiler hangs (and so does a child of it): after BUILD_TIMEOUT_S both are killed
    # and the error names the timeout.
    hang = tmp_path / "cxx"
    hang.write_text(
        "#!/bin/sh\ncase \"$1\" in --version) echo \"hang 1.0\"; exit 0;; esac\nsleep 120 &\nwait\n"
    )
    hang.chmod(0o755)
    monkeypatch.setenv("CXX", str(hang))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(native, "BUILD_TIMEOUT_S", 1)
    start = time.monotonic()
    with pytest.raises(RuntimeError, match=r"longer than the build timeout of 1 s"):
        native.build("topk_select.cc")
    assert time.monotonic() - start < 30
    # Neither the output nor a partial file is left behind; the next build may try again.
    assert [
        f for f in os.listdir(tmp_path / "cache" / "jackpot_jax") if not f.endswith(".lock")
    ] == []


def test_version_problem():
    assert onednn.version_problem((3, 2, 0), (3, 2, 0)) == ""
    assert onednn.version_problem((3, 4, 1), (3, 2, 0)) == ""  # newer library: compatible
    assert onednn.version_problem((3, 1, 0), (3, 2, 0)) == (
        "oneDNN library 3.1.0 is older than the headers 3.2.0 the handler was built against"
    )
    assert "older than the headers 3.2.1" in onednn.version_problem((3, 2, 0), (3, 2, 1))
    assert "another major version" in onednn.version_problem((4, 0, 0), (3, 2, 0))


def test_header_version_reads_the_header(tmp_path):
    inc = tmp_path / "oneapi" / "dnnl"
    inc.mkdir(parents=True)
    (inc / "dnnl_version.h").write_text(
        "#define DNNL_VERSION_MAJOR 3\n#define DNNL_VERSION_MINOR 12\n"
        "#define DNNL_VERSION_PATCH 1\n#define DNNL_VERSION_HASH \"abc\"\n"
    )
    assert onednn.header_version(str(tmp_path)) == (3, 12, 1)
    (inc / "dnnl_version.h").write_text("#define DNNL_VERSION_MAJOR 3\n")
    with pytest.raises(RuntimeError, match="declares no DNNL_VERSION_MINOR"):
        onednn.header_version(str(tmp_path))


def _newer_headers():
    """An include directory with oneDNN headers newer than the installed library's (torch
    ships a copy), or None."""
    found = onednn.find_onednn()
    try:
        import torch
    except ImportError:
        return None
    inc = os.path.join(os.path.dirname(torch.__file__), "include")
    if found is None or not os.path.exists(os.path.join(inc, "oneapi", "dnnl", "dnnl_version.h")):
        return None
    if onednn.header_version(inc) <= onednn.header_version(found[1]):
        return None
    return inc


@needs_compiler
@pytest.mark.skipif(
    _newer_headers() is None, reason="no oneDNN headers newer than the installed library"
)
def test_a_library_older_than_the_headers_is_refused(tmp_path):
    # The installed library with a newer release's headers (torch's copy): the handler builds,
    # and is refused at load with both versions named.
    lib_dir, inc_dir = onednn.find_onednn()
    root = tmp_path / "root"
    (root / "lib").mkdir(parents=True)
    for name in os.listdir(lib_dir):
        if name.startswith("libdnnl.so"):
            os.symlink(os.path.join(lib_dir, name), root / "lib" / name)
    os.symlink(_newer_headers(), root / "include")
    proc = python_script(
        _warnings_script(
            "from jackpot_jax.kernels.native import onednn\n"
            "print(onednn.available(), '|', onednn.unavailable_reason())\n"
        ),
        env_update={"JACKPOT_JAX_ONEDNN_ROOT": str(root), "XDG_CACHE_HOME": str(tmp_path / "c")},
    )
    assert proc.returncode == 0, proc.stderr
    new = ".".join(map(str, onednn.header_version(_newer_headers())))
    # The library's own version (that of its matched headers where the handler does not load).
    old = onednn.versions().get("library") or ".".join(map(str, onednn.header_version(inc_dir)))
    want = f"oneDNN library {old} is older than the headers {new} the handler was built against"
    assert proc.stdout.startswith(f"False | {want}"), proc.stdout
    messages = json.loads(proc.stdout.splitlines()[-1])
    assert len(messages) == 1 and want in messages[0]

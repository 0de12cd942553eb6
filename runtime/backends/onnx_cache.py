"""The ONNX graph cache: a bundle without graphs is exported on first use, once per content.

`--backend auto` on a CPU runs ONNX Runtime for every bundle (about 2x PyTorch eager on
x86 CPUs). A bundle that ships no graphs (`init-model`, `train`, `convert`, a fine-tune)
is exported by `v2m.export.exporter.export_bundle` into

    $V2M_CACHE_DIR/<key>/          (else ~/.cache/v2m/onnx/<key>/)

where `<key>` is a sha256 over what the graphs are made of and run by: the weight files'
sha256, the graph-shaping config sections, the precision, the ONNX opset, the v2m and ONNX
Runtime versions (and for int8 the recipe's version, `INT8_RECIPE`). A changed weight file or config gets a new key; an entry is never reused
because a directory exists (its manifest still checks every graph's sha256 on load).

Concurrent first use: one process exports under an exclusive lock (`<key>.lock`), into a
temporary directory renamed into place when complete; the others wait for the lock and
find the entry. Without `fcntl` (not POSIX) two processes may both export: the first
rename wins and the other's copy is removed.

Hashing large weights on every run would cost seconds, so each file's sha256 is kept in
`hashes/` keyed by (path, size, mtime, inode); a rewritten file gets a new entry.

The exporter itself sits above the runtime (it checks graphs through the runtime's engines),
so the runtime never imports it: `v2m.export.enable_first_use_export()` hands it to this
cache (`register_exporter`); the CLI, the server and Ray do so before they load a pipeline.
Without it, `--backend auto` runs a bundle without graphs on PyTorch.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from v2m.core.bundle import BundleConfig
from v2m.core.errors import BackendUnavailable
from v2m.core.manifest import (
    INT8_RECIPE,
    MANIFEST_NAME,
    ONNX_OPSET,
    config_sections_digest,
    sha256_file,
)

__all__ = ["CACHE_ENV", "cache_root", "cache_key", "cached_export", "can_export"]

log = logging.getLogger("v2m.backend.cache")

CACHE_ENV = "V2M_CACHE_DIR"


def cache_root() -> Path:
    """$V2M_CACHE_DIR, else ~/.cache/v2m/onnx."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "v2m" / "onnx"


_exporter: list = []  # `register_exporter`'s function: export_bundle(src, out, names=, precisions=)


def register_exporter(export_bundle) -> None:
    """Let the cache export bundles (`v2m.export.enable_first_use_export` calls this)."""
    _exporter[:] = [export_bundle]


def can_export() -> str | None:
    """None when this process can export (an exporter registered, torch and onnx importable),
    else what is missing."""
    import importlib.util

    missing = [m for m in ("torch", "onnx") if importlib.util.find_spec(m) is None]
    if not _exporter and not missing:
        return "no exporter registered (v2m.export.enable_first_use_export())"
    return ", ".join(missing) or None


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "none"


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def file_sha256(path: Path, root: Path) -> str:
    """sha256 of a file, remembered under `root/hashes` by (real path, size, mtime, inode)."""
    st = path.stat()
    stamp = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{st.st_ino}"
    memo = root / "hashes" / hashlib.sha256(stamp.encode()).hexdigest()
    try:
        got = memo.read_text().strip()
        if len(got) == 64:
            return got
    except OSError:
        pass
    digest = sha256_file(path)
    try:
        _atomic_write(memo, digest)
    except OSError as e:  # a read-only cache still works, it hashes each time
        log.debug("cannot remember the hash of %s (%s)", path, e)
    return digest


def cache_key(bundle_dir: str | Path, cfg: BundleConfig, precision: str, root: Path | None = None) -> str:
    """The content key of a bundle's graphs (hex, 32 chars)."""
    bundle_dir, root = Path(bundle_dir), root or cache_root()
    parts = {
        "weights": {f.name: file_sha256(f, root) for f in sorted(bundle_dir.glob("*.safetensors"))},
        "config": config_sections_digest(cfg),
        "family": cfg.family,
        "precision": precision,
        "opset": ONNX_OPSET,
        "v2m": _version("v2m-runtime"),
        "onnxruntime": _version("onnxruntime"),
        "torch": _version("torch"),
    }
    if precision == "int8":  # fp32 keys stay as they were
        from v2m.core.devices import cpu_int8_saturates

        parts["int8_recipe"] = INT8_RECIPE
        if cpu_int8_saturates():  # 7-bit weights (`export.quantize`): another graph than a VNNI CPU's
            parts["int8_reduce_range"] = True
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]


@contextmanager
def _lock(path: Path):
    try:
        import fcntl
    except ImportError:  # not POSIX: rename-wins below still keeps the entry whole
        yield
        return
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _complete(entry: Path) -> bool:
    return (entry / MANIFEST_NAME).is_file()


def cached_export(bundle_dir: str | Path, cfg: BundleConfig, precision: str = "fp32",
                  names: tuple[str, ...] | None = None, root: Path | None = None) -> Path:
    """The exported bundle of `bundle_dir`'s graphs in `precision`: the cache entry, exported
    now when there is none. Raises BackendUnavailable when it cannot be exported here."""
    bundle_dir, root = Path(bundle_dir), root or cache_root()
    key = cache_key(bundle_dir, cfg, precision, root)
    entry = root / key
    if _complete(entry):
        log.info("ONNX graphs of %s from the cache %s", bundle_dir, entry)
        return entry
    missing = can_export()
    if missing:
        hint = ("call v2m.export.enable_first_use_export() first" if missing.startswith("no exporter")
                else "not installed: pip install 'v2m-runtime[export]'")
        raise BackendUnavailable(f"{bundle_dir} has no ONNX graphs and this process cannot export them "
                                 f"({missing}; {hint}); use --backend torch")
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise BackendUnavailable(f"cannot create the ONNX cache {root} ({e.strerror}); set {CACHE_ENV} to a "
                                 "writable folder or use --backend torch") from None
    with _lock(root / f"{key}.lock"):
        if _complete(entry):  # another process exported it while this one waited
            log.info("ONNX graphs of %s from the cache %s (exported by another process)", bundle_dir, entry)
            return entry
        _export_into(bundle_dir, entry, precision, names)
    return entry


def _export_into(bundle_dir: Path, entry: Path, precision: str, names: tuple[str, ...] | None) -> None:
    from v2m.core.errors import V2MError

    (export_bundle,) = _exporter

    if entry.exists():  # not complete: what a killed process left (a rename is all or nothing)
        shutil.rmtree(entry, ignore_errors=True)
    log.info("exporting %s to ONNX (%s) on first use into %s ...", bundle_dir, precision, entry)
    t0 = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(dir=entry.parent, prefix=f".{entry.name}."))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp's 0700 would hide a shared cache's entries
    try:
        try:
            export_bundle(bundle_dir, tmp, names=names, precisions=(precision,))
        except V2MError as e:
            other = "--precision fp32" if precision == "int8" else "--backend torch"
            raise BackendUnavailable(f"exporting {bundle_dir} to ONNX ({precision}) failed: {e}; use {other}") from None
        try:
            os.rename(tmp, entry)
        except OSError:
            if not _complete(entry):  # not another process's complete entry: a real failure
                raise
            log.info("another process installed %s first; using it", entry)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.warning("%s has no ONNX graphs: exported them (%s) on first use in %.1f s into the cache %s; later runs "
                "start at once", bundle_dir, precision, time.perf_counter() - t0, entry)

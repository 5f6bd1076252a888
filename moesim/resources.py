"""Built-in data by name: hardware profiles, model specs, runtime profiles, shipped traces and workloads.

``--hw h100x8`` finds ``hardware/h100x8.yaml`` whether moesim runs from a checkout or from a
plain (non-editable) install; anything containing a path separator or an existing file is a path.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from moesim.errors import UserError

# kind -> (package holding the files, file suffixes, what to call it in messages)
_KINDS = {
    "hardware": ("moesim.data.hardware", (".yaml", ".yml"), "hardware profile"),
    "catalog": ("moesim.data.hardware", (".yaml", ".yml"), "hardware catalog"),
    "model": ("moesim.specs.models", (".yaml", ".yml"), "model spec"),
    "runtime": ("moesim.specs.runtimes", (".yaml", ".yml"), "runtime profile"),
    "trace": ("moesim.data.traces", (".npz",), "trace"),
    "workload": ("moesim.serving.workloads", (".yaml", ".yml"), "workload"),
}
# The device and link catalogs share the hardware folder with the cluster profiles but are not
# profiles: they are listed as kind "catalog" only (by name they still resolve as hardware files).
CATALOGS = ("devices", "links")


def builtin_dir(kind: str) -> Path:
    package, _, _ = _KINDS[kind]
    return Path(str(resources.files(package)))


def builtin_names(kind: str) -> list[str]:
    """Names (file stems) of the built-in files of ``kind``, sorted; ``hardware`` lists cluster profiles."""
    _, suffixes, _ = _KINDS[kind]
    folder = builtin_dir(kind)
    names = sorted(p.stem for p in folder.iterdir() if p.suffix in suffixes and not p.name.startswith("_"))
    if kind == "catalog":
        return [n for n in names if n in CATALOGS]
    if kind == "hardware":
        return [n for n in names if n not in CATALOGS]
    return names


def resolve(kind: str, name_or_path: str | Path) -> Path:
    """Path of a built-in file called ``name_or_path``, or ``name_or_path`` itself if it is a path."""
    _, suffixes, what = _KINDS[kind]
    text = str(name_or_path)
    candidate = Path(text)
    if candidate.exists() or "/" in text or "\\" in text or candidate.suffix in suffixes:
        if not candidate.exists():
            raise UserError(f"no such {what} file", file=text)
        if candidate.is_dir():
            raise UserError(f"expected a {what} file, got a directory", file=text)
        return candidate
    folder = builtin_dir(kind)
    for suffix in suffixes if kind != "catalog" or text in CATALOGS else ():
        p = folder / f"{text}{suffix}"
        if p.exists():
            return p
    names = ", ".join(builtin_names(kind)) or "none"
    raise UserError(f"unknown {what} {text!r}; built-in: {names} (or give a path to a file)")

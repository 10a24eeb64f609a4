"""Bad input class "disk full / permissions / file modes": one atomic writer for every file.

- every writer of the library, with the disk filling up mid-write (an ``OSError(ENOSPC)``
  injected at the file write): one clear line naming the file, the ``errno`` kept, an existing
  destination left byte-for-byte intact, no temporary file left; through the CLI: exit code 2;
- other I/O failures (permission, read-only, a directory where a file should be, ...) and the
  errors of torch's and safetensors' own writers are translated the same way;
- written files follow the umask (weights and checkpoints included, not mkstemp's 0600);
- a source scan: no module under edgevision/ writes a user-visible file except through
  :mod:`edgevision.io` (explicit, commented allow-list).
"""

from __future__ import annotations

import ast
import builtins
import errno
import hashlib
import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from edgevision import io as evio
from edgevision.io import (
    WriteError,
    atomic_torch_save,
    atomic_write,
    atomic_write_bytes,
    atomic_write_text,
    save_figure,
    translate_os_error,
)

PACKAGE = Path(evio.__file__).resolve().parent
MODEL = "mobilenetv3_small_075"


# ---------------------------------------------------------------- helpers
def tiny() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(4, 2))


def temporaries(folder: Path) -> list[str]:
    """Files the atomic writer would leave behind after a failure (any depth)."""
    return sorted(p.name for p in folder.rglob("*") if ".tmp" in p.name)


class _FullFile:
    """A file object on a disk with ``budget`` bytes left: the write past it fails like the kernel's."""

    def __init__(self, f, budget: int, code: int):
        self._f, self._budget, self._code = f, budget, code

    def write(self, data):
        data = data if isinstance(data, str) else bytes(data)
        if len(data) > self._budget:
            self._f.write(data[: self._budget])  # a partial write, as on a real full disk
            self._budget = 0
            raise OSError(self._code, os.strerror(self._code))
        self._budget -= len(data)
        return self._f.write(data)

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __iter__(self):
        return iter(self._f)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()


@pytest.fixture()
def fail_writes(monkeypatch, tmp_path):
    """``fail_writes(code=ENOSPC, budget=0, only=None)``: from now on every file opened for
    writing under tmp_path (whose name contains ``only``, when given) fails with ``code`` after
    ``budget`` bytes. Injected at Python's ``open``, which every writer of the library uses
    (torch.save and the downloads write through Python file objects)."""
    real_open = builtins.open

    def arm(code: int = errno.ENOSPC, budget: int = 0, only: str | None = None):
        def fake_open(file, mode="r", *args, **kwargs):
            f = real_open(file, mode, *args, **kwargs)
            writing = any(c in mode for c in "wax+")
            if writing and isinstance(file, (str, os.PathLike)) and str(file).startswith(str(tmp_path)) \
                    and (only is None or only in os.path.basename(file)):
                return _FullFile(f, budget, code)
            return f

        monkeypatch.setattr(builtins, "open", fake_open)

    return arm


def assert_write_error(exc: BaseException, path: Path, code: int, text: str) -> None:
    assert isinstance(exc, WriteError) and isinstance(exc, OSError)
    assert exc.errno == code
    assert str(exc) == text.format(path=path), str(exc)
    assert "\n" not in str(exc)


# ---------------------------------------------------------------- the writer itself
@pytest.mark.parametrize("mask,mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664), (0o027, 0o640)])
def test_written_files_follow_the_umask(tmp_path, mask, mode):
    old = os.umask(mask)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
        atomic_write_bytes(tmp_path / "sub" / "b.bin", b"x")  # missing folders are created
        atomic_write(tmp_path / "c.bin", lambda tmp: Path(tmp).write_bytes(b"x"))
        assert evio.current_umask() == mask
    finally:
        os.umask(old)
    for p in (tmp_path / "a.txt", tmp_path / "sub" / "b.bin", tmp_path / "c.bin"):
        assert stat.S_IMODE(p.stat().st_mode) == mode, (p, oct(p.stat().st_mode))


def test_weights_checkpoints_and_results_follow_the_umask(tmp_path):
    """Issue: weights and checkpoints were 0600 (mkstemp) while the logs beside them were 0644."""
    from edgevision.checkpoints import save_model
    from edgevision.training.checkpointing import save_checkpoint
    from edgevision.training.plots import plot_curves

    old = os.umask(0o022)
    try:
        save_model(tiny(), tmp_path / "model.safetensors", "tiny")
        save_checkpoint(tmp_path / "last.pth", {"model": tiny().state_dict(), "epoch": 1})
        atomic_torch_save({"w": torch.zeros(2)}, tmp_path / "w.pth")
        plot_curves([{"epoch": 1, "train_loss": 1.0, "val_loss": 1.0, "train_acc": 1.0, "val_top1": 1.0}],
                    tmp_path / "curves.png")
    finally:
        os.umask(old)
    for name in ("model.safetensors", "last.pth", "w.pth", "curves.png"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644, name
    assert torch.load(tmp_path / "last.pth", weights_only=True)["epoch"] == 1


def test_replaces_atomically_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "r.json"
    atomic_write_text(path, "old")
    atomic_write_text(path, "new")
    assert path.read_text() == "new" and temporaries(tmp_path) == []


@pytest.mark.parametrize("code,text", [
    (errno.ENOSPC, "disk full while writing {path}"),
    (errno.EDQUOT, "disk quota exceeded while writing {path}"),
    (errno.EACCES, "permission denied writing {path}"),
    (errno.EPERM, "permission denied writing {path}"),
    (errno.EROFS, "read-only file system: cannot write {path}"),
    (errno.EIO, "input/output error while writing {path}"),
])
def test_write_failures_are_one_line_and_keep_the_old_file(tmp_path, fail_writes, code, text):
    path = tmp_path / "out.json"
    atomic_write_text(path, "old contents")
    fail_writes(code, budget=3)
    with pytest.raises(WriteError) as info:
        atomic_write_text(path, "new contents, longer than the budget")
    assert_write_error(info.value, path, code, text)
    assert path.read_text() == "old contents" and temporaries(tmp_path) == []


def test_real_kernel_enospc_is_translated(tmp_path):
    """/dev/full fails every write with the kernel's own ENOSPC."""
    if not (os.path.exists("/dev/full") and stat.S_ISCHR(os.stat("/dev/full").st_mode)):
        pytest.skip("no /dev/full device on this system (some sandboxes lack it)")
    path = tmp_path / "x.bin"
    atomic_write_bytes(path, b"old")

    def write(tmp):
        Path(tmp).write_bytes(b"partial")
        with open("/dev/full", "wb") as f:
            f.write(b"x" * 10)
            f.flush()

    with pytest.raises(WriteError) as info:
        atomic_write(path, write)
    assert_write_error(info.value, path, errno.ENOSPC, "disk full while writing {path}")
    assert path.read_bytes() == b"old" and temporaries(tmp_path) == []


def test_bad_destinations_are_named(tmp_path):
    (tmp_path / "adir").mkdir()
    with pytest.raises(WriteError) as info:
        atomic_write_text(tmp_path / "adir", "x")
    assert_write_error(info.value, tmp_path / "adir", errno.EISDIR, "{path} is a directory; expected a file path")
    (tmp_path / "afile").write_text("keep")
    with pytest.raises(WriteError) as info:
        atomic_write_text(tmp_path / "afile" / "x.json", "x")
    assert_write_error(info.value, tmp_path / "afile" / "x.json", errno.ENOTDIR,
                       "a parent of {path} is a file, not a directory")
    assert (tmp_path / "afile").read_text() == "keep"
    long = tmp_path / ("n" * 300 + ".json")
    with pytest.raises(WriteError) as info:
        atomic_write_text(long, "x")
    assert_write_error(info.value, long, errno.ENAMETOOLONG, "file name too long: {path}")
    assert temporaries(tmp_path) == []


def test_torch_and_safetensors_writer_errors_are_translated(tmp_path, monkeypatch):
    """torch's C++ writer reports a full disk as RuntimeError("... inline_container.cc ... file
    write failed"); safetensors' Rust writer as SafetensorError("... (os error 28)")."""
    path = tmp_path / "last.pth"
    atomic_write_bytes(path, b"old")
    torch_msg = ("[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file "
                 "data/0: file write failed")

    def torch_writer(tmp):
        Path(tmp).write_bytes(b"half")
        raise RuntimeError(torch_msg)

    monkeypatch.setattr(evio, "_nearly_full", lambda p, margin=1 << 20: True)
    with pytest.raises(WriteError) as info:
        atomic_write(path, torch_writer)
    assert_write_error(info.value, path, errno.ENOSPC, "disk full while writing {path}")
    monkeypatch.setattr(evio, "_nearly_full", lambda p, margin=1 << 20: False)
    with pytest.raises(WriteError) as info:
        atomic_write(path, torch_writer)
    assert_write_error(info.value, path, errno.EIO, "input/output error while writing {path}")

    SafetensorError = type("SafetensorError", (Exception,), {})

    def st_writer(tmp):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    with pytest.raises(WriteError) as info:
        atomic_write(path, st_writer)
    assert_write_error(info.value, path, errno.ENOSPC, "disk full while writing {path}")
    assert path.read_bytes() == b"old" and temporaries(tmp_path) == []


def test_errors_that_are_not_io_pass_unchanged(tmp_path):
    from edgevision.checkpoints import CheckpointError

    path = tmp_path / "x.bin"
    atomic_write_bytes(path, b"old")
    for exc in (TypeError("bad object"), ValueError("bad value"),
                CheckpointError("a message mentioning [Errno 28] is still ours")):
        def writer(tmp, exc=exc):
            Path(tmp).write_bytes(b"half")
            raise exc

        with pytest.raises(type(exc)) as info:
            atomic_write(path, writer)
        assert info.value is exc
    assert path.read_bytes() == b"old" and temporaries(tmp_path) == []


def test_errors_about_other_files_are_not_blamed_on_the_destination(tmp_path):
    path = tmp_path / "int8.onnx"

    def writer(tmp):
        (tmp_path / "missing-input.onnx").read_bytes()  # write_fn reads its input, which is absent

    with pytest.raises(FileNotFoundError) as info:
        atomic_write(path, writer)
    assert not isinstance(info.value, WriteError) and "missing-input.onnx" in str(info.value)
    assert temporaries(tmp_path) == [] and not path.exists()


def test_translate_os_error_keeps_errno_and_unknown_errors_stay_one_line(tmp_path):
    e = translate_os_error(OSError(errno.ENOSPC, "No space left on device"), tmp_path / "f")
    assert e.errno == errno.ENOSPC and str(e) == f"disk full while writing {tmp_path / 'f'}"
    e = translate_os_error(OSError(errno.EBUSY, "Device or resource busy\nmore"), "f")
    assert e.errno == errno.EBUSY and str(e) == "could not write f: Device or resource busy"
    assert translate_os_error(e, "g") is e


# ---------------------------------------------------------------- every writer of the library
def _history():
    return [{"epoch": 1, "train_loss": 2.0, "val_loss": 2.1, "train_acc": 10.0, "val_top1": 11.0}]


def _write_model(path):
    from edgevision.checkpoints import save_model

    save_model(tiny(), path, "tiny")


def _write_checkpoint(path):
    from edgevision.training.checkpointing import save_checkpoint

    save_checkpoint(path, {"model": tiny().state_dict(), "epoch": 3})


def _write_curves(path):
    from edgevision.training.plots import plot_curves

    plot_curves(_history(), path)


def _write_confusion(path):
    from edgevision.training.plots import plot_confusion

    plot_confusion(np.eye(3, dtype=int), ["a", "b", "c"], path)


def _write_figure(path):
    from matplotlib.figure import Figure

    fig = Figure()
    fig.add_subplot().plot([0, 1])
    save_figure(fig, path, dpi=50)


def _write_bench(path):
    from edgevision.profiling.bench import COLUMNS, write_results

    row = {c: None for c in COLUMNS}
    row.update(model="emo_1m", runtime="eager", batch=1, params=1e6, macs=2e8, median_ms=1.0)
    machine = {"cpu": "cpu", "logical_cores": 2, "load_average_1_5_15": [0, 0, 0],
               "versions": {"torch": "x", "onnxruntime": "y"}}
    settings = {"threads": 1, "warmup": 1, "iters": 1, "size": 224, "macs_note": "", "memory_note": ""}
    write_results({"results": [row], "machine": machine, "settings": settings, "command": "bench"}, path.parent)


def _write_sample_png(path):
    from edgevision.training.data import export_imagefolder

    export_imagefolder(np.zeros((1, 4, 4), np.uint8), np.array([0]), path.parents[2], ["a"], "train",
                       overwrite=True)


WRITERS = {  # name: (writer, file name of the destination checked for old contents)
    # (the sample data export removes an older split by design before writing; the old image
    # it replaces is not expected to survive, see the `replaced` set below)
    "save_model": (_write_model, "model.safetensors"),
    "training checkpoint": (_write_checkpoint, "last.pth"),
    "atomic_torch_save": (lambda p: atomic_torch_save({"w": torch.ones(1000)}, p), "w.pth"),
    "curves plot": (_write_curves, "curves.png"),
    "confusion plot": (_write_confusion, "confusion_matrix.png"),
    "save_figure": (_write_figure, "fig.svg"),
    "bench results": (_write_bench, "bench.csv"),
    "sample data image": (_write_sample_png, "train/a/00000.png"),
}


REPLACED = {"sample data image"}  # export_imagefolder(overwrite=True) clears the split first


@pytest.mark.parametrize("name", list(WRITERS))
def test_disk_full_in_every_writer(tmp_path, fail_writes, name):
    write, rel = WRITERS[name]
    out = tmp_path / "out"
    path = out / rel
    write(path)  # a first, good write
    assert path.is_file()
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    fail_writes(errno.ENOSPC, budget=10)
    with pytest.raises(WriteError) as info:
        write(path)
    assert_write_error(info.value, path, errno.ENOSPC, "disk full while writing {path}")  # names the file
    if name not in REPLACED:
        assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before  # nothing lost
    assert temporaries(tmp_path) == []


def test_permission_denied_in_a_writer(tmp_path, fail_writes):
    path = tmp_path / "model.safetensors"
    _write_model(path)
    before = path.read_bytes()
    fail_writes(errno.EACCES)
    with pytest.raises(WriteError) as info:
        _write_model(path)
    assert_write_error(info.value, path, errno.EACCES, "permission denied writing {path}")
    assert path.read_bytes() == before and temporaries(tmp_path) == []


def test_disk_full_while_fetching_weights(reference_dir, tmp_path, fail_writes, capsys):
    from safetensors.torch import load_file

    from edgevision.cli import main
    from edgevision.hub import cached_path, fetch_weights

    src = tmp_path / "release" / "net.pth"
    src.parent.mkdir()
    torch.save(load_file(str(reference_dir / "parity" / "emo_1m.safetensors")), src)
    cache = tmp_path / "cache"
    target = cached_path("emo_1m", src.as_uri(), cache)
    fail_writes(errno.ENOSPC, budget=4096)
    with pytest.raises(WriteError) as info:
        fetch_weights("emo_1m", url=src.as_uri(), cache=cache, progress=False)
    assert_write_error(info.value, target, errno.ENOSPC, "disk full while writing {path}")
    assert not target.exists() and temporaries(cache) == []
    rc = main(["fetch", "emo_1m", "--url", src.as_uri(), "--cache", str(cache)])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.splitlines()[-1] == f"edgevision fetch: error: disk full while writing {target}"
    assert not target.exists() and temporaries(cache) == []


def test_disk_full_in_sample_data_cli(tmp_path, fail_writes, capsys):
    from edgevision.cli import main

    out = tmp_path / "fm"
    fail_writes(errno.ENOSPC, budget=0, only=".png")
    rc = main(["sample-data", str(out), "--train-per-class", "1", "--val-per-class", "1", "--source", "vendored"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"edgevision sample-data: error: disk full while writing {out / 'train'}")
    assert temporaries(tmp_path) == []


def _tiny_tree(root, n=4):
    from PIL import Image

    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", (20, 20), (40 * i, 90 if c == "a" else 200, 30)).save(root / c / f"{i}.png")
    return root


def test_disk_full_during_a_training_checkpoint(tmp_path, fail_writes, capsys):
    """Issue 11.5: a full disk at the checkpoint write was torch's inline_container.cc message."""
    from edgevision.cli import main

    data = _tiny_tree(tmp_path / "d")
    out = tmp_path / "run"
    args = ["train", MODEL, "--data", str(data), "--output", str(out), "--workers", "0", "--img-size", "32",
            "--batch-size", "4", "--threads", "1", "--no-progress", "--val-fraction", "0.25"]
    assert main(args + ["--epochs", "1"]) == 0
    before = (out / "last.pth").read_bytes()
    capsys.readouterr()
    fail_writes(errno.ENOSPC, budget=1000, only="last.pth")
    rc = main(args + ["--epochs", "2"])  # resumes, trains epoch 2, fails to save it
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err and "inline_container" not in err
    assert err.splitlines()[-1] == f"edgevision train: error: disk full while writing {out / 'last.pth'}"
    assert (out / "last.pth").read_bytes() == before  # the epoch-1 checkpoint is intact
    assert torch.load(out / "last.pth", weights_only=True)["epoch"] == 1
    assert temporaries(out) == []


# ---------------------------------------------------------------- no write bypasses edgevision.io
# Calls that write a file, and which argument is the destination (index, keyword).
_WRITE_FUNCS = {
    "torch.save": (1, "f"), "torch.jit.save": (1, "f"), "onnx.save": (1, "f"), "onnx.save_model": (1, "f"),
    "torch.onnx.export": (2, "f"), "np.save": (0, "file"), "np.savez": (0, "file"),
    "np.savez_compressed": (0, "file"), "numpy.save": (0, "file"), "shutil.copy": (1, "dst"),
    "shutil.copy2": (1, "dst"), "shutil.copyfile": (1, "dst"), "shutil.move": (1, "dst"),
    "shutil.copytree": (1, "dst"), "os.open": (0, "path"),
}
_WRITE_FUNC_NAMES = {  # by the last name, however imported
    "urlretrieve": (1, "filename"), "download_url_to_file": (1, "dst"), "quantize_static": (1, "model_output"),
    "quantize_dynamic": (1, "model_output"), "quant_pre_process": (1, "output_model_path"),
    "SummaryWriter": (0, "log_dir"), "save_file": (1, "filename"),
}
_WRITE_METHODS = {"save": 0, "savefig": 0, "tofile": 0, "write_text": None, "write_bytes": None, "touch": None}

# Writes that are not user-visible files, each with the reason. (file, start of the call)
ALLOWED = {
    # A kernel control file (resets the peak-RSS counter), not a file of the user's.
    ("profiling/timing.py", 'open("/proc/self/clear_refs", "w")'),
    # TensorBoard event files are append-only logs streamed during training (TensorBoard reads
    # a cut-short last record); they cannot be written by replacing the file.
    ("training/logs.py", 'SummaryWriter(str(run.out / "tensorboard"))'),
    # ORT's pre-processing output goes to the callers' temporary/work directories
    # (quantize_onnx_static's TemporaryDirectory, int8.py's workdir), never a user's file.
    ("export/quantize.py", "quant_pre_process(str(fp32_path), str(out)"),
    # The latency tables' ONNX export goes to a mkstemp file that is deleted once ORT has loaded it.
    ("latency/measure.py", "torch.onnx.export(module.eval(), tuple(inputs), str(path)"),
    ("latency/measure.py", "prog.save(str(path))"),
    # LatencyModel.save writes through atomic_write_text itself.
    ("leak/randnets.py", "lm.save(path)"),
    # An flock lock file, opened for appending and never written.
    ("search/timing.py", 'open(path, "a")'),
}


def _dotted(node) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def _unwrap(node):
    while isinstance(node, ast.Call) and _dotted(node.func).split(".")[-1] in ("str", "fspath", "Path") \
            and len(node.args) == 1:
        node = node.args[0]
    return node


def _arg(call: ast.Call, index, keyword):
    for kw in call.keywords:
        if kw.arg == keyword:
            return kw.value
    return call.args[index] if index is not None and len(call.args) > index else None


def _write_mode(node) -> bool:
    return isinstance(node, ast.Constant) and isinstance(node.value, str) and any(c in node.value for c in "wax+")


def find_unsafe_writes(source: str, filename: str = "<src>") -> list[tuple[int, str]]:
    """(line, call) of every file write whose destination is not one of: the temporary path
    that :func:`edgevision.io.atomic_write` hands its write function, an in-memory buffer
    (BytesIO/StringIO), or a file object opened by a checked ``open``."""
    tree = ast.parse(source, filename)
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    funcs = {}
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            funcs.setdefault(node.name, []).append(node)
    def scope(node):
        while node in parents:
            node = parents[node]
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                return node
        return tree

    def params(fn) -> list[str]:
        return [a.arg for a in fn.args.posonlyargs + fn.args.args]

    # temp[fn] = names of fn's parameters that hold atomic_write's temporary path: the first
    # parameter of a function or lambda passed to atomic_write, then (to a fixpoint) the
    # parameter of a helper function that every call in the module passes such a path.
    temp: dict = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and _dotted(node.func).split(".")[-1] == "atomic_write":
            fn = _arg(node, 1, "write_fn")
            for f in [fn] if isinstance(fn, ast.Lambda) else funcs.get(getattr(fn, "id", None), []):
                if params(f):
                    temp.setdefault(f, set()).add(params(f)[0])

    def is_temp(expr, where) -> bool:
        expr = _unwrap(expr)
        return isinstance(expr, ast.Name) and expr.id in temp.get(scope(where), ())

    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)]
    changed = True
    while changed:
        changed = False
        for fname, defs in funcs.items():
            sites = [c for c in calls if c.func.id == fname]
            if not sites or len(defs) != 1:
                continue
            for i, pname in enumerate(params(defs[0])):
                if pname in temp.get(defs[0], ()):
                    continue
                passed = [_arg(c, i, pname) for c in sites]
                if all(a is not None and is_temp(a, c) for a, c in zip(passed, sites)):
                    temp.setdefault(defs[0], set()).add(pname)
                    changed = True

    def allowed(dest, call) -> bool:
        dest = _unwrap(dest)
        if _dotted(dest) == "os.devnull":
            return True
        if not isinstance(dest, ast.Name):
            return False
        fn = scope(call)
        if dest.id in temp.get(fn, ()):
            return True  # the temporary path of atomic_write
        for node in ast.walk(fn):
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call) \
                    and _dotted(node.value.func).split(".")[-1] in ("BytesIO", "StringIO") \
                    and any(isinstance(t, ast.Name) and t.id == dest.id for t in node.targets):
                return True  # in memory
            if isinstance(node, ast.withitem) and isinstance(node.optional_vars, ast.Name) \
                    and node.optional_vars.id == dest.id and isinstance(node.context_expr, ast.Call) \
                    and _dotted(node.context_expr.func).split(".")[-1] == "open":
                return True  # a file object; its open() is checked itself
        return False

    found = []
    for call in ast.walk(tree):
        if not isinstance(call, ast.Call):
            continue
        name = _dotted(call.func)
        last = name.split(".")[-1]
        dest = None
        if name in ("open", "io.open", "builtins.open"):
            if not _write_mode(_arg(call, 1, "mode")):
                continue
            dest = _arg(call, 0, "file")
        elif isinstance(call.func, ast.Attribute) and last == "open":  # Path.open(mode)
            if not _write_mode(_arg(call, 0, "mode")):
                continue
            dest = call.func.value
        elif name in _WRITE_FUNCS:
            dest = _arg(call, *_WRITE_FUNCS[name])
            if name == "os.open" and "O_RDONLY" in ast.unparse(call) and "O_WR" not in ast.unparse(call):
                continue
        elif last in _WRITE_FUNC_NAMES:
            dest = _arg(call, *_WRITE_FUNC_NAMES[last])
        elif isinstance(call.func, ast.Attribute) and last in _WRITE_METHODS:
            index = _WRITE_METHODS[last]
            dest = call.func.value if index is None else _arg(call, index, None)
        else:
            continue
        if dest is None or allowed(dest, call):  # None: e.g. torch.onnx.export(dynamo=True) returning a program
            continue
        found.append((call.lineno, ast.get_source_segment(source, call) or ast.unparse(call)))
    return sorted(found)


def test_the_write_scanner_can_fail():
    src = '''
import io, torch, numpy as np
from pathlib import Path
from edgevision.io import atomic_write
def f(path, fig, img, state):
    open(path, "w")                         # 6 flagged
    Path(path).write_text("x")              # 7 flagged
    fig.savefig(path)                       # 8 flagged
    torch.save(state, path)                 # 9 flagged
    img.save(str(path))                     # 10 flagged
    np.savez_compressed(path, a=1)          # 11 flagged
    path.open("wb")                         # 12 flagged
    open(path)                              # a read
    buf = io.BytesIO()
    img.save(buf, format="PNG")             # in memory
    atomic_write(path, lambda tmp: torch.save(state, tmp))
    def write(tmp):
        with open(tmp, "wb") as fh:
            np.save(fh, 1)
    atomic_write(path, write)
    def not_passed(tmp):
        open(tmp, "w")                      # 22 flagged: not a write function of atomic_write
    atomic_write(path, lambda tmp: helper(state, tmp))
    atomic_write(path, lambda tmp: mixed(state, tmp))
    mixed(state, path)
def helper(state, target):
    torch.save(state, target)               # every caller passes the temporary path: fine
def mixed(state, target):
    torch.save(state, target)               # 29 flagged: one caller passes the real path
'''
    assert [line for line, _ in find_unsafe_writes(src)] == [6, 7, 8, 9, 10, 11, 12, 22, 29]


def test_no_module_writes_a_file_without_the_atomic_writer():
    offenders, used = [], set()
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel == "io.py":  # the writer itself
            continue
        for line, call in find_unsafe_writes(path.read_text(), rel):
            key = next((a for a in ALLOWED if a[0] == rel and call.startswith(a[1])), None)
            if key:
                used.add(key)
            else:
                offenders.append(f"edgevision/{rel}:{line}: {call.splitlines()[0]}")
    assert not offenders, (
        "these calls write a file without edgevision.io (use atomic_write(path, lambda tmp: ...), "
        "atomic_write_text/bytes, atomic_torch_save or save_figure; or add a commented entry to "
        "ALLOWED):\n" + "\n".join(offenders))
    assert used == ALLOWED, f"stale allow-list entries: {ALLOWED - used}"


def test_checkpoints_atomic_write_is_the_shared_writer():
    import edgevision.checkpoints as ckpts

    assert ckpts.atomic_write is atomic_write


def test_hub_cache_file_matches_its_hash(tmp_path):
    """The fetched file is the downloaded bytes exactly (no text-mode or partial write)."""
    from edgevision.hub import fetch_weights

    src = tmp_path / "srv" / "w.safetensors"
    src.parent.mkdir()
    from safetensors.torch import save_file

    save_file({"x": torch.arange(10.0)}, str(src))
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    path = fetch_weights("emo_1m", url=src.as_uri(), cache=tmp_path / "c", progress=False, sha256=digest)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~evio.current_umask()

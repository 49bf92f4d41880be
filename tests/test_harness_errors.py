"""Errors of the harness's command line and of hook modules: one line, exit code 2, nothing half-written."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from clharness import atomic, cli
from clharness.errors import HarnessError, HookError, HookRaisedError
from clharness.loop import train_sequence
from conftest import HOOKS, REPO
from harness_utils import load, settings, tiny_model, tiny_stream, write_hooks

NO_REG = str(HOOKS / "no_reg.py")
ONE_LINE_HOOK_ERROR = re.compile(
    r"error: hook (estimate_importance|compute_regularization_loss) (raised \w+: .*|called sys\.exit\(.*\)) "
    r"\(\w+\.py:\d+\)\n"
)


def _main_py(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run `continual-learning/main.py` as a user would (Split-MNIST), with `args` after the script."""
    cmd = [sys.executable, str(REPO / "continual-learning" / "main.py"), "--experiment", "splitMNIST", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def _short(root: Path, *args: str) -> list[str]:
    """Flags of a run of a few seconds on the real data."""
    return [
        "--iters", "3", "--contexts", "2", "--train-subset", "200", "--device", "cpu", "--data-dir", str(root),
        "--no-progress", *args,
    ]  # fmt: skip


def _line_of(path: Path, text: str) -> int:
    """1-based number of the line of `path` that contains `text`."""
    return next(i for i, line in enumerate(path.read_text().splitlines(), start=1) if text in line)


# --- --out is checked before any work -------------------------------------------------------------------------


def test_out_folder_is_refused_before_any_work(tmp_path):
    """An existing folder as --out: one line, exit 2, and nothing ran (the data folder was never touched)."""
    data = tmp_path / "no-data-here"
    proc = _main_py("--hooks", NO_REG, "--data-dir", str(data), "--out", str(tmp_path), "--no-progress")
    assert proc.returncode == 2
    assert (
        proc.stderr
        == f"error: --out {tmp_path} is a folder; give the path of a file, e.g. {tmp_path}/result.json\n"
    )
    assert proc.stdout == ""  # no run: no accuracies printed
    assert not data.exists()  # the data loader never ran (it would have created it for a download)
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no temporary file left behind


@pytest.mark.parametrize(
    ("out", "message"),
    [
        ("{tmp}/", "--out {tmp}/ ends with a path separator; give the path of a file"),
        ("{tmp}/file.txt/r.json", "--out {tmp}/file.txt/r.json: {tmp}/file.txt is not a folder"),
        ("{tmp}/file.txt/sub/r.json", "--out {tmp}/file.txt/sub/r.json: {tmp}/file.txt is not a folder"),
        ("{hooks}", "--out {hooks} is the hook module; the result would overwrite it"),
    ],
)
def test_bad_out_paths_are_refused_in_one_line(tmp_path, capsys, monkeypatch, out, message):
    (tmp_path / "file.txt").write_text("x")
    hooks = write_hooks(tmp_path, (HOOKS / "no_reg.py").read_text())
    monkeypatch.setattr(cli, "run", _must_not_run)
    out = out.format(tmp=tmp_path, hooks=hooks)
    assert cli.main(["--experiment", "splitMNIST", "--hooks", str(hooks), "--out", out]) == 2
    err = capsys.readouterr().err
    assert err == "error: " + message.format(tmp=tmp_path, hooks=hooks) + "\n"
    assert (tmp_path / "file.txt").read_text() == "x"


def _must_not_run(*args, **kwargs):
    raise AssertionError("the run started although --out is unusable")


def test_good_out_paths_are_written_and_missing_folders_created(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cli, "run", _fake_run)
    out = tmp_path / "new" / "deeper" / "r.json"
    assert cli.main(["--experiment", "splitMNIST", "--hooks", NO_REG, "--out", str(out)]) == 0
    assert json.loads(out.read_text())["average_accuracy"] == 0.75
    out.write_text("old")  # an existing file is replaced
    assert cli.main(["--experiment", "splitMNIST", "--hooks", NO_REG, "--out", str(out)]) == 0
    assert json.loads(out.read_text())["average_accuracy"] == 0.75
    assert sorted(p.name for p in out.parent.iterdir()) == ["r.json"]
    assert f"result written to {out}" in capsys.readouterr().out


def _fake_run(hooks, cfg, progress=True):
    return {
        "reg_strength": 1e5, "eval_split": "test", "device": "cpu", "per_context_accuracy": [0.5, 1.0],
        "average_accuracy": 0.75, "timing": {"total_s": 1.0},
    }  # fmt: skip


@pytest.mark.parametrize("exc", [OSError(28, "No space left on device"), KeyboardInterrupt()])
def test_a_failed_or_interrupted_write_leaves_no_temporary_file(tmp_path, monkeypatch, capsys, exc):
    monkeypatch.setattr(cli, "run", _fake_run)

    def fsync(fd):  # the result is in the temporary file, not yet on disk: fail there
        raise exc

    monkeypatch.setattr(atomic.os, "fsync", fsync)  # where the result is written
    out = tmp_path / "r.json"
    code = cli.main(["--experiment", "splitMNIST", "--hooks", NO_REG, "--out", str(out)])
    assert list(tmp_path.iterdir()) == []  # neither the result nor a temporary file
    err = capsys.readouterr().err
    if isinstance(exc, OSError):
        assert code == 2
        assert err == f"error: cannot write the result to {out}: [Errno 28] No space left on device\n"
    else:
        assert code == 130
        assert err == "interrupted (SIGINT): the run was stopped, no result written\n"


def test_ctrl_c_during_the_run_exits_130_in_one_line(monkeypatch, capsys, tmp_path):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "run", interrupted)
    out = tmp_path / "r.json"
    assert cli.main(["--experiment", "splitMNIST", "--hooks", NO_REG, "--out", str(out)]) == 130
    assert capsys.readouterr().err == "interrupted (SIGINT): the run was stopped, no result written\n"
    assert not out.exists()


def test_sigterm_is_handled_like_ctrl_c(mnist_root, tmp_path):
    """A scheduler's stop (SIGTERM) mid-run: one line, exit 128 + 15, no result and no temporary file."""
    marker = tmp_path / "started"
    hooks = write_hooks(
        tmp_path,
        f"""
        import time
        from pathlib import Path

        def estimate_importance(model, dataset, prev_params, device):
            return {{}}

        def compute_regularization_loss(model, importance_dict, prev_params_dict):
            Path({str(marker)!r}).touch()
            time.sleep(60)
            return torch.zeros(())
        """,
    )
    out = tmp_path / "out" / "r.json"
    cmd = [sys.executable, str(REPO / "continual-learning" / "main.py"), "--experiment", "splitMNIST",
           "--hooks", str(hooks), "--out", str(out), *_short(mnist_root)]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert marker.exists(), proc.communicate(timeout=10)
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM
    assert stderr == "interrupted (SIGTERM): the run was stopped, no result written\n"
    assert stdout == ""
    assert not out.parent.exists()  # not even the folder of the result


# --- a hook module that raises or exits -----------------------------------------------------------------------

RAISES = """

def _ratio(a, b):
    return a / b  # the failing line

def estimate_importance(model, dataset, prev_params, device):
    return {"fcs__0__bias": _ratio(1, 0)}

def compute_regularization_loss(model, importance_dict, prev_params_dict):
    return torch.zeros(())
"""


def _train(hooks, contexts=2):
    stream = tiny_stream(contexts=contexts)
    train_sequence(tiny_model(contexts=contexts), stream, stream, hooks, settings(iters=2))


def test_a_raising_hook_is_a_hook_error_with_the_users_file_and_line(tmp_path):
    hooks = load(tmp_path, RAISES)
    path = tmp_path / "hooks.py"
    with pytest.raises(HookRaisedError) as info:
        _train(hooks)
    err = info.value
    line = _line_of(path, "# the failing line")  # the deepest frame in the hook module, inside its helper
    assert (
        str(err) == f"hook estimate_importance raised ZeroDivisionError: division by zero (hooks.py:{line})"
    )
    assert isinstance(err, HookError) and isinstance(err, HarnessError)  # what library callers catch
    assert (err.hook, err.filename, err.lineno) == ("estimate_importance", str(path), line)
    assert isinstance(err.original, ZeroDivisionError) and err.__cause__ is err.original
    assert (err.context, err.step) == (1, None)


def test_the_line_is_the_hooks_own_not_the_library_frame_that_raised(tmp_path):
    body = (
        "import json\n"
        "def estimate_importance(m, d, p, dev):\n"
        "    return {n.replace('.', '__'): torch.ones_like(t) for n, t in m.named_parameters()}\n"
        "def compute_regularization_loss(m, i, p):\n"
        "    if i:\n"
        "        json.loads('{')  # raises deep inside the json module\n"
        "    return torch.zeros(())\n"
    )
    with pytest.raises(HookRaisedError) as info:
        _train(load(tmp_path, body))
    assert re.fullmatch(
        r"hook compute_regularization_loss raised JSONDecodeError: Expecting .* \(hooks\.py:7\)",
        str(info.value),
    )
    assert (info.value.context, info.value.step) == (2, 1)


def test_a_multi_line_message_is_kept_on_one_line(tmp_path):
    body = (
        "def estimate_importance(m, d, p, dev):\n    raise ValueError('first line\\n\\n  second line')\n"
        "def compute_regularization_loss(m, i, p):\n    return torch.zeros(())\n"
    )
    with pytest.raises(HookRaisedError) as info:
        _train(load(tmp_path, body))
    assert (
        str(info.value) == "hook estimate_importance raised ValueError: first line second line (hooks.py:3)"
    )


@pytest.mark.parametrize(("call", "shown"), [("sys.exit(0)", "sys.exit(0)"), ("sys.exit()", "sys.exit()"),
                                             ("exit('bye')", "sys.exit('bye')")])  # fmt: skip
def test_a_hook_that_exits_is_a_hook_error(tmp_path, call, shown):
    body = (
        "import sys\n"
        "def estimate_importance(m, d, p, dev):\n    return {}\n"
        f"def compute_regularization_loss(m, i, p):\n    {call}\n"
    )
    with pytest.raises(HookRaisedError) as info:
        _train(load(tmp_path, body), contexts=1)
    assert str(info.value) == f"hook compute_regularization_loss called {shown} (hooks.py:6)"


def test_a_module_that_exits_or_raises_on_import_names_its_line(tmp_path):
    with pytest.raises(HookError) as info:
        load(tmp_path, "import sys\nsys.exit(0)\n")
    assert (
        str(info.value)
        == f"{tmp_path / 'hooks.py'}: importing the hook module called sys.exit(0) (hooks.py:3)"
    )
    with pytest.raises(HookError) as info:
        load(tmp_path, "x = 1\nraise RuntimeError('boom')\n")
    assert str(info.value) == (
        f"{tmp_path / 'hooks.py'}: importing the hook module failed: RuntimeError: boom (hooks.py:3)"
    )


def test_interrupts_are_not_turned_into_hook_errors(tmp_path):
    body = (
        "def estimate_importance(m, d, p, dev):\n    return {}\n"
        "def compute_regularization_loss(m, i, p):\n    raise KeyboardInterrupt\n"
    )
    with pytest.raises(KeyboardInterrupt):
        _train(load(tmp_path, body), contexts=1)


@pytest.mark.parametrize(
    ("body", "shape"),
    [
        (RAISES, "hook estimate_importance raised ZeroDivisionError: division by zero"),
        (
            "import sys\ndef estimate_importance(m, d, p, dev):\n    sys.exit(0)\n"
            "def compute_regularization_loss(m, i, p):\n    return torch.zeros(())\n",
            "hook estimate_importance called sys.exit(0)",
        ),
    ],
)
def test_cli_a_raising_or_exiting_hook_exits_2_with_one_line(mnist_root, tmp_path, body, shape):
    hooks = write_hooks(tmp_path, body, name="custom_regularization.py")
    out = tmp_path / "r.json"
    proc = _main_py("--hooks", str(hooks), "--out", str(out), *_short(mnist_root))
    assert proc.returncode == 2
    assert ONE_LINE_HOOK_ERROR.fullmatch(proc.stderr), proc.stderr
    assert proc.stderr.startswith(f"error: {shape} (custom_regularization.py:")
    assert "Traceback" not in proc.stderr and "average accuracy" not in proc.stdout
    left = sorted(p.name for p in tmp_path.iterdir() if p.name != "__pycache__")
    assert left == ["custom_regularization.py"]  # no result, no temporary file


def test_library_callers_catch_a_raising_hook_as_a_hook_error(mnist_root, tmp_path):
    """What a search worker sees from `clharness.runner.run`: a HookError whose text names the user's line."""
    from clharness.runner import RunConfig, run

    hooks = write_hooks(tmp_path, RAISES, name="custom_regularization.py")
    cfg = RunConfig(
        "splitMNIST", iters=2, contexts=2, train_subset=100, device="cpu", data_dir=str(mnist_root)
    )
    with pytest.raises(HookError) as info:
        run(hooks, cfg, progress=False)
    line = _line_of(hooks, "# the failing line")
    assert str(info.value) == (
        f"hook estimate_importance raised ZeroDivisionError: division by zero (custom_regularization.py:{line})"
    )
    assert isinstance(info.value, HookRaisedError) and info.value.context == 1

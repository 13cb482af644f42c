"""``pastac train`` on several processes (``pastac.train.distributed``), on the CPU with the gloo backend: two
processes started by torchrun take the steps one process takes with the same global batch, a run of two
interrupted after a checkpoint resumes to the same adapter on two processes started by ``accelerate launch``
(by torchrun where accelerate is not installed), the collectives behave, and a launcher's environment that is
wrong stops the command with a message. Each launch costs seconds of imports, so there are two of ``pastac``.

The runs train a tiny random llama (saved to a folder the processes load with ``--model``) for four steps of
three micro-batches of up to two examples: process 0 takes two of each step's micro-batches, process 1 one, and
none in the last step, which holds one. The one-process reference runs in this process, through the same
command line.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from test_cli import run
from test_train import LEARNABLE, RECORDS

from pastac.cli.main import main
from pastac.train.distributed import DistributedError, World, joined

pytestmark = [
    pytest.mark.distributed,
    pytest.mark.filterwarnings("ignore:Setting `save_embedding_layers`"),  # LEARNABLE adapts lm_head
]

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT_S = 240
# batch 2 x 3 micro-batches, 3 examples (2 micro-batches an epoch), 5 epochs: 10 micro-batches in 4 steps,
# the last step's one for process 0 alone; dropout off, so that the processes' random streams do not matter
OPTIONS = (
    "--target-modules",
    ",".join(LEARNABLE),
    "--batch-size",
    "2",
    "--grad-accum",
    "3",
    "--epochs",
    "5",
    "--lr",
    "1e-2",
    "--dropout",
    "0",
    "--kl-weight",
    "0.5",
    "--save-every",
    "2",
    "-q",
)
STEPS = 4


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, saved_tiny_model: Path) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("distributed")
    data = folder / "data.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in RECORDS) + "\n")
    return {"root": folder, "data": data, "model": saved_tiny_model}


def argv(setup: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return ["train", str(setup["data"]), "--out", str(out), "--model", str(setup["model"]), *OPTIONS, *extra]


def in_this_process(setup: dict[str, Path], out: Path, *extra: str) -> str:
    """``pastac train`` in this process, on one thread (as each launched process runs); its standard output."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    stdout = io.StringIO()
    try:
        with contextlib.redirect_stdout(stdout):
            assert main(argv(setup, out, *extra)) == 0
    finally:
        torch.set_num_threads(threads)
    return stdout.getvalue()


def launch(setup: dict[str, Path], launcher: list[str], out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """``pastac train`` started by ``launcher`` (two processes on this machine, talking over 127.0.0.1)."""
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "HF_HOME": str(setup["root"] / "hf"),  # no accelerate config of the user's
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "ACCELERATE_USE_CPU"):
        env.pop(name, None)
    done = subprocess.run(
        [*launcher, "-m", "pastac", *argv(setup, out, *extra)],
        env=env,
        cwd=setup["root"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def torchrun() -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "--master-addr",
        "127.0.0.1",
        "--master-port",
        str(free_port()),
    ]


def adapter(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "adapter_model.safetensors")


def losses(folder: Path) -> list[dict[str, float]]:
    lines = (folder / "loss.csv").read_text().splitlines()
    names = lines[0].split(",")
    return [dict(zip(names, map(float, line.split(",")), strict=True)) for line in lines[1:]]


def assert_same_run(got: Path, want: Path) -> None:
    """The same adapter and loss rows (step, loss, kl, lr, tokens) as ``want``'s run."""
    a, b = adapter(got), adapter(want)
    assert a.keys() == b.keys() and b
    for key in b:
        torch.testing.assert_close(a[key], b[key], atol=1e-5, rtol=0, msg=key)
    rows, expected = losses(got), losses(want)
    assert [r["step"] for r in rows] == [r["step"] for r in expected]
    for row, other in zip(rows, expected, strict=True):
        assert (row["lr"], row["tokens"]) == (other["lr"], other["tokens"])
        assert row["loss"] == pytest.approx(other["loss"], rel=1e-5) and row["kl"] == pytest.approx(
            other["kl"], rel=1e-4
        )


@pytest.fixture(scope="module")
def one_process(setup: dict[str, Path]) -> dict[str, Path]:
    """The reference: one process, stopped after 2 steps, and run through."""
    stopped, through = setup["root"] / "one-2", setup["root"] / "one"
    in_this_process(setup, stopped, "--max-steps", "2")
    in_this_process(setup, through)
    return {"stopped": stopped, "through": through}


def accelerate_launch() -> list[str]:
    return [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",  # torchrun's processes, GPUs or not: --cpu would start one process, without mpirun
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_ip",
        "127.0.0.1",
        "--main_process_port",
        str(free_port()),
    ]


def has_accelerate() -> bool:
    return importlib.util.find_spec("accelerate") is not None


@pytest.fixture(scope="module")
def two_processes(setup: dict[str, Path]) -> dict[str, Any]:
    """Two processes under torchrun, stopped after 2 steps (a checkpoint at step 2); then two more resume it to
    the end, started by ``accelerate launch`` (by torchrun without accelerate)."""
    out = setup["root"] / "two"
    first = launch(setup, torchrun(), out, "--max-steps", "2")
    stopped = setup["root"] / "two-2"
    shutil.copytree(out, stopped)
    by = "accelerate" if has_accelerate() else "torchrun"
    second = launch(setup, accelerate_launch() if by == "accelerate" else torchrun(), out)
    return {"stopped": stopped, "first": first, "through": out, "second": second, "resumed_by": by}


def test_two_processes_make_the_update_one_process_makes(setup, one_process, two_processes):
    stopped = two_processes["stopped"]
    assert_same_run(stopped, one_process["stopped"])
    first = two_processes["first"]
    summary = [line for line in first.stdout.splitlines() if line.startswith("pastac: ")]  # the main process's
    assert len(summary) == 1 and summary[0].startswith(
        "pastac: trained 2 of 4 planned steps with 2 processes on 3 examples (1 invalid and 0 too long skipped)"
    )
    assert summary[0].endswith(f"adapter in {setup['root'] / 'two'}")
    log = json.loads((stopped / "train_log.json").read_text())
    assert log["hardware"]["world_size"] == 2 and log["hardware"]["backend"] == "gloo"
    assert (
        log["steps"] == 2
        and log["tokens"] == json.loads((one_process["stopped"] / "train_log.json").read_text())["tokens"]
    )
    card = (stopped / "README.md").read_text()
    assert "2 processes, data-parallel (torch.distributed, gloo)" in card and "shared among 2 processes" in card
    # the main process wrote the outputs, and the random state of both in the checkpoint
    rng = torch.load(stopped / "checkpoint" / "rng.pt", weights_only=True)
    assert len(rng["ranks"]) == 2 and not torch.equal(rng["ranks"][0]["cpu"], rng["ranks"][1]["cpu"])
    assert json.loads((stopped / "checkpoint" / "state.json").read_text())["processes"] == 2
    assert not [p.name for p in stopped.iterdir() if p.name.startswith(".") or p.name.endswith((".tmp", ".old"))]


def test_an_interrupted_two_process_run_resumes_to_the_same_adapter(one_process, two_processes):
    assert_same_run(two_processes["through"], one_process["through"])
    assert "trained 4 of 4 planned steps with 2 processes" in two_processes["second"].stdout
    assert "resumed from step 2" in two_processes["second"].stdout
    log = json.loads((two_processes["through"] / "train_log.json").read_text())
    assert log["resumed_from"] == 2 and log["steps"] == STEPS


def test_accelerate_launch_starts_two_processes(one_process, two_processes):
    if two_processes["resumed_by"] != "accelerate":
        pytest.skip("accelerate is not installed: torchrun resumed the run")
    assert "trained 4 of 4 planned steps with 2 processes" in two_processes["second"].stdout
    log = json.loads((two_processes["through"] / "train_log.json").read_text())
    assert log["hardware"]["world_size"] == 2 and log["hardware"]["backend"] == "gloo"
    assert_same_run(two_processes["through"], one_process["through"])


COLLECTIVES = """
import sys
from pathlib import Path

import torch
from pastac.train.distributed import DistributedError, PeerFailure, joined

with joined("cpu") as world:
    assert world.size == 2 and world.backend == "gloo"
    # a has a gradient on process 1 only, b on none, c on both
    a, b, c = (torch.nn.Parameter(torch.zeros(3)) for _ in range(3))
    if world.rank == 1:
        a.grad = torch.ones(3)
    c.grad = torch.full((3,), world.rank + 1.0)
    assert world.reduce_gradients([a, b, c], [world.rank + 0.5, 1.0]) == [2.0, 2.0]
    assert torch.equal(a.grad, torch.ones(3)) and b.grad is None and torch.equal(c.grad, torch.full((3,), 3.0))
    try:  # a failure on one process is one on both: its own there, PeerFailure here
        with world.together():
            if world.rank == 1:
                raise ValueError("only here")
    except PeerFailure as error:
        assert world.rank == 0 and error.rank == 1 and str(error) == "process 1 failed: only here", error
    except ValueError:
        assert world.rank == 1
    else:
        raise AssertionError("together() let a failure pass")
    try:
        world.same(world.rank, "the rank")
    except DistributedError as error:
        assert "disagree on the rank (process 0: 0; process 1: 1)" in str(error), error
    else:
        raise AssertionError("same() let a difference pass")
    world.same("x", "x")
    assert world.main_first(lambda: world.rank) == world.rank
    assert world.gather(world.rank) == [0, 1]
    with joined("cpu") as inner:  # a group already initialised is used, and left as it is
        assert inner == world
    assert torch.distributed.is_initialized()
    rank = world.rank
assert not torch.distributed.is_initialized()
(Path(sys.argv[1]) / f"done-{rank}").write_text("")
"""


def test_the_collectives_of_two_processes(setup):
    script = setup["root"] / "collectives.py"
    script.write_text(COLLECTIVES)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    marks = setup["root"] / "collectives"
    marks.mkdir()
    command = [*torchrun(), str(script), str(marks)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert done.returncode == 0, done.stdout + done.stderr
    assert sorted(p.name for p in marks.iterdir()) == ["done-0", "done-1"]  # both went through


# A launcher's environment that is wrong: a message, exit status 2, nothing written.

LAUNCHED = {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1"}


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"}, "WORLD_SIZE=2 in the environment, but no MASTER_ADDR"),
        ({**LAUNCHED, "MASTER_PORT": "1", "RANK": "2"}, "RANK=2 in the environment, but WORLD_SIZE=2"),
        (
            {**LAUNCHED, "MASTER_PORT": "1", "WORLD_SIZE": "two"},
            "WORLD_SIZE='two' in the environment is not an integer",
        ),
        ({**LAUNCHED, "MASTER_PORT": "1", "ACCELERATE_USE_FSDP": "true"}, "asks for FSDP (ACCELERATE_USE_FSDP)"),
        ({"ACCELERATE_USE_CPU": "True", "MASTER_ADDR": "127.0.0.1"}, "accelerate launch --cpu started this process"),
    ],
)
def test_a_wrong_launcher_environment_is_a_usage_error(capsys, monkeypatch, setup, tmp_path, env, message):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    code, out, err = run(capsys, *argv(setup, tmp_path / "out"))
    assert (code, out) == (2, "") and err.startswith("pastac: error: ") and message in err, err
    assert not (tmp_path / "out").exists()


def test_a_process_group_that_cannot_be_joined_is_a_usage_error(capsys, monkeypatch, setup, tmp_path):
    with socket.socket() as taken:  # process 0 serves the group's store at MASTER_PORT: here it cannot
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for name, value in {**LAUNCHED, "MASTER_PORT": str(port)}.items():
            monkeypatch.setenv(name, value)
        code, out, err = run(capsys, *argv(setup, tmp_path / "out"))
    assert (code, out) == (2, "")
    assert f"pastac: error: process 0 of 2 cannot join the process group (gloo) at 127.0.0.1:{port}: " in err, err
    assert not torch.distributed.is_initialized() and not (tmp_path / "out").exists()


def test_the_environment_of_each_launcher():
    assert World.from_environment({}) == World() and World().is_main and not World().distributed
    torchrun_env = {**LAUNCHED, "MASTER_PORT": "29500", "RANK": "1", "LOCAL_RANK": "1"}
    assert World.from_environment(torchrun_env) == World(rank=1, size=2, local_rank=1)
    mpi = {"OMPI_COMM_WORLD_SIZE": "4", "OMPI_COMM_WORLD_RANK": "3", "OMPI_COMM_WORLD_LOCAL_RANK": "1"}
    world = World.from_environment({**mpi, "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29500"})
    assert world == World(rank=3, size=4, local_rank=1) and not world.is_main and world.distributed
    assert world.device("cuda") == torch.device("cuda", 1) and world.device("cpu") == torch.device("cpu")
    assert World.from_environment({"WORLD_SIZE": "1", "RANK": "0"}) == World()  # torchrun --nproc-per-node 1
    with pytest.raises(DistributedError, match="no RANK"):
        World.from_environment({"WORLD_SIZE": "2", "MASTER_ADDR": "h", "MASTER_PORT": "1"})
    with pytest.raises(DistributedError, match="DeepSpeed"):
        World.from_environment({"ACCELERATE_USE_DEEPSPEED": "true"})


def test_one_process_needs_no_process_group(monkeypatch):
    for name in ("WORLD_SIZE", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE"):
        monkeypatch.delenv(name, raising=False)
    with joined("cpu") as world:
        assert world == World() and not torch.distributed.is_initialized()
        parameter = torch.nn.Parameter(torch.ones(2))
        parameter.grad = torch.full((2,), 3.0)
        assert world.reduce_gradients([parameter], [1.5, 2.0]) == [1.5, 2.0]
        assert torch.equal(parameter.grad, torch.full((2,), 3.0)) and world.gather("x") == ["x"]
        with pytest.raises(ValueError, match="mine"), world.together():
            raise ValueError("mine")

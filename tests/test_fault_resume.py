"""Fault test: `vsad train` killed with SIGKILL mid-training and rerun resumes from its last
checkpoint and ends with the same weights, bit for bit, as a run that was never interrupted."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

pytest.importorskip("diffusers", reason="diffusers is a runtime dependency of the model")

STEPS = 12
RUN_TIMEOUT = 600  # seconds for one whole `vsad train` run (a loaded 2-core machine: ~30 s)
CHECKPOINT = os.path.join("checkpoints", "checkpoint.safetensors")
# `vsad train`, with the trainer's load_checkpoint reporting the step it resumed from (the
# final weights alone could not tell a resumed run from one that silently started over).
CLI = """
import sys
from vsad.cli import main
from vsad.model.training import VALDMTrainer

load = VALDMTrainer.load_checkpoint

def reporting_load(self, path):
    load(self, path)
    print(f"resumed at step {self.step}", file=sys.stderr)

VALDMTrainer.load_checkpoint = reporting_load
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def realiad_root(tmp_path_factory):
    from vsad.data import make_category, write_realiad

    root = tmp_path_factory.mktemp("realiad")
    category = make_category(n_train=3, n_test=1, n_views=5, image_size=64, seed=3)
    write_realiad(category, root, "toy")
    return root


def train_command(root, run):
    return [
        sys.executable, "-c", CLI, "train", "--data", str(root), "--category", "toy",
        "--out", str(run), "--quiet", "encoder=unshuffle", "feature_levels=[-2,-1]",
        "latent_level=false", "image_size=64", "inversion_steps=1",
        f"train.steps={STEPS}", "train.checkpoint_every=1",
    ]  # fmt: skip


def env():
    # The same thread count in every run: the backward is bitwise reproducible for a given count.
    return {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "2"}


def run_to_completion(root, run) -> str:
    done = subprocess.run(
        train_command(root, run),
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        env=env(),
        cwd=root,  # not the checkout: its source tree has no compiled vsad._C
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stderr


def checkpoint_step(path) -> int | None:
    """The step a checkpoint holds, or None while there is none (or it cannot be read)."""
    import json

    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return int(json.loads(f.metadata()["vsad_checkpoint"])["step"])
    except Exception:  # noqa: BLE001 - not there yet
        return None


def model_tensors(run) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    out = {}
    for path in sorted((run / "model").glob("*.safetensors")):
        out.update({f"{path.name}:{k}": v for k, v in load_file(path).items()})
    return out


def test_sigkill_mid_training_then_rerun_resumes_to_the_same_weights(realiad_root, tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    assert "resumed" not in run_to_completion(realiad_root, straight)

    proc = subprocess.Popen(
        train_command(realiad_root, killed),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env(),
        cwd=realiad_root,
    )
    try:
        deadline = time.monotonic() + RUN_TIMEOUT  # bounds the wait, times nothing
        step = None
        while step is None:
            if proc.poll() is not None:
                pytest.fail(f"training exited (rc {proc.returncode}) before its first checkpoint")
            if time.monotonic() > deadline:
                pytest.fail("no checkpoint appeared within the run timeout")
            step = checkpoint_step(killed / CHECKPOINT)
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert not (killed / "model").exists(), "killed after training finished: nothing tested"
    at_kill = checkpoint_step(killed / CHECKPOINT)
    assert at_kill is not None and 1 <= at_kill < STEPS, at_kill

    log = run_to_completion(realiad_root, killed)  # the same command again: resumes
    assert f"resumed at step {at_kill}" in log, log
    assert checkpoint_step(killed / CHECKPOINT) == STEPS
    assert not [p for p in (killed / "checkpoints").iterdir() if p.name.startswith(".")]
    want, got = model_tensors(straight), model_tensors(killed)
    assert want.keys() == got.keys() and want
    for name, tensor in want.items():
        assert torch.equal(tensor, got[name]), f"{name} differs after the resumed run"

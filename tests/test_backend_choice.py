"""Backend selection: by device, overridable by argument or VSAD_BACKEND, logged at DEBUG."""

from __future__ import annotations

import logging

import pytest
import torch

from vsad.ops._backend import choose_backend


def test_cpu_defaults_to_cpp(monkeypatch, caplog):
    monkeypatch.delenv("VSAD_BACKEND", raising=False)
    with caplog.at_level(logging.DEBUG, logger="vsad.ops"):
        assert choose_backend("window_attention", torch.device("cpu")) == "cpp"
    assert "backend cpp for cpu tensors (device default)" in caplog.text


def test_environment_overrides_default(monkeypatch):
    monkeypatch.setenv("VSAD_BACKEND", "reference")
    assert choose_backend("window_attention", torch.device("cpu")) == "reference"
    monkeypatch.setenv("VSAD_BACKEND", "fast")
    with pytest.raises(ValueError, match=r"backend \(VSAD_BACKEND\): got 'fast'"):
        choose_backend("window_attention", torch.device("cpu"))


def test_argument_beats_environment(monkeypatch):
    monkeypatch.setenv("VSAD_BACKEND", "reference")
    assert choose_backend("window_attention", torch.device("cpu"), "cpp") == "cpp"


def test_cpp_refuses_non_cpu_tensors():
    with pytest.raises(ValueError, match="'cpp' runs on CPU tensors, got tensors on meta"):
        choose_backend("window_attention", torch.device("meta"), "cpp")

from __future__ import annotations

import json

import pytest

import vsad
from vsad.cli import main


def test_info_reports_backends(capsys):
    assert main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["vsad"] == vsad.__version__
    assert info["backends"]["cpp"] is True
    assert info["backends"]["cpu_isa"] in ("generic", "avx2", "avx512")


def test_help_and_unknown_command(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    assert "info" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        main(["no-such-command"])
    assert exc.value.code == 2

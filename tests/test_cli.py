import yaml

from cli.main import app


def test_help_lists_commands(runner):
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    assert "doctor" in result.output


def test_doctor_finds_embedded_weights(runner, root, monkeypatch):
    monkeypatch.chdir(root)
    result = runner.invoke(app, ["doctor"])
    assert result.exit_code == 0, result.output
    assert "ready" in result.output


def test_doctor_bad_params_is_one_line_exit_2(runner, tmp_path):
    bad = tmp_path / "p.yaml"
    bad.write_text("base:\n  sed: 1\n")
    result = runner.invoke(app, ["doctor", "--params", str(bad)])
    assert result.exit_code == 2
    assert "unknown key 'sed'" in result.output
    assert "Traceback" not in result.output

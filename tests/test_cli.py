import yaml

from talk.cli.main import app


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


def test_doctor_full_profile_says_where_weights_go(runner, root, monkeypatch):
    from talk.core import runtime

    monkeypatch.chdir(root)
    monkeypatch.setattr(runtime.console, "width", 400)
    result = runner.invoke(app, ["doctor", "--params", "profiles/full.yaml"])
    assert result.exit_code == 2
    assert "3 required component(s) missing" in result.output
    for where in ("weights/sd-vae-ft-mse", "weights/svd/unet", "models/buffalo_l"):
        assert where in result.output


def test_dry_run_prints_resolved_config(runner, root, monkeypatch):
    monkeypatch.chdir(root)
    result = runner.invoke(app, ["discover", "--dry-run", "--set", "base.seed=9"])
    assert result.exit_code == 0, result.output
    resolved = yaml.safe_load(result.output)
    assert resolved["base"]["seed"] == 9
    assert "discover" in resolved

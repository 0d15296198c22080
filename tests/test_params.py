import dataclasses
from pathlib import Path

import pytest
import yaml

from talk.core import params as P
from talk.core.errors import TalkError


def test_every_shipped_section_parses(root):
    params = P.load(root / "params.yaml")
    shipped = yaml.safe_load((root / "params.yaml").read_text())
    assert set(shipped) <= set(params.sections)
    for name in shipped:
        section = params.sections[name]
        assert dataclasses.is_dataclass(section)
        # every key of the file reached the typed config, with the file's value
        plain = P.to_plain(section)
        for key, value in (shipped[name] or {}).items():
            assert key in plain
            if not isinstance(value, (dict, str)):
                assert plain[key] == value, (name, key)


def test_sections_are_frozen(root):
    params = P.load(root / "params.yaml")
    with pytest.raises(dataclasses.FrozenInstanceError):
        params.base.seed = 3


def _write(tmp_path, text):
    p = tmp_path / "p.yaml"
    p.write_text(text)
    return p


def test_unknown_key_names_section_and_closest(tmp_path):
    with pytest.raises(TalkError, match=r"unknown key 'sed' in section 'base' \(did you mean 'seed'\?\)"):
        P.load(_write(tmp_path, "base:\n  sed: 3\n"))


def test_unknown_section_names_closest(tmp_path):
    with pytest.raises(TalkError, match=r"unknown section 'bse'.*'base'"):
        P.load(_write(tmp_path, "bse:\n  seed: 3\n"))


@pytest.mark.parametrize(
    "text, message",
    [
        ("base:\n  seed: -1\n", "below the minimum"),
        ("base:\n  seed: abc\n", "expected an integer"),
        ("base:\n  device: tpu\n", "not one of"),
        ("base:\n  threads: 1.5\n", "expected an integer"),
        ("base: [1, 2]\n", "expected a mapping"),
        ("base:\n  seed: [\n", "not valid YAML"),
    ],
)
def test_type_and_range_errors(tmp_path, text, message):
    with pytest.raises(TalkError, match=message):
        P.load(_write(tmp_path, text))


def test_overrides_apply_and_are_checked(root):
    params = P.load(root / "params.yaml", ["base.seed=7", "paths.raw=/tmp/elsewhere"])
    assert params.base.seed == 7
    assert params.paths.raw == Path("/tmp/elsewhere")
    with pytest.raises(TalkError, match="unknown key 'seeds'"):
        P.load(root / "params.yaml", ["base.seeds=7"])
    with pytest.raises(TalkError, match="section.key=value"):
        P.load(root / "params.yaml", ["seed"])


def test_missing_file_is_a_user_error(tmp_path):
    with pytest.raises(TalkError, match="params file not found"):
        P.load(tmp_path / "nope.yaml")


def test_resolved_config_round_trips(root, tmp_path):
    params = P.load(root / "params.yaml", ["base.seed=5"])
    out = params.write_resolved(tmp_path / "resolved.yaml")
    again = P.load(out)
    assert again.to_dict() == params.to_dict()


def test_fixed_length_tuple_fields():
    import dataclasses as dc

    @dc.dataclass(frozen=True)
    class C:
        xyz: tuple[float, float, float] = (0.0, 0.0, 0.0)

    assert P.parse(C, {"xyz": [1, 2.5, 3]}, "c").xyz == (1.0, 2.5, 3.0)
    with pytest.raises(TalkError, match="expected 3 values"):
        P.parse(C, {"xyz": [1, 2]}, "c")


def test_full_profile_has_the_same_keys_as_the_default(root):
    default = yaml.safe_load((root / "params.yaml").read_text())
    full = yaml.safe_load((root / "profiles" / "full.yaml").read_text())

    def keys(d, prefix=""):
        out = set()
        for k, v in d.items():
            out.add(prefix + k)
            if isinstance(v, dict):
                out |= keys(v, prefix + k + ".")
        return out

    assert keys(full) == keys(default)
    params = P.load(root / "profiles" / "full.yaml")
    assert params.model.image_size == 512
    assert params.model.denoiser.backbone == "clip"


def test_code_defaults_are_params_yaml(root):
    """params.yaml is the one source of defaults: every section's dataclass, built from no keys,
    equals the section params.yaml ships (nested configs included), so code that builds a default
    config (tests, the Python API) gets exactly what the pipeline runs with."""
    shipped = P.load(root / "params.yaml")
    differ = []
    for name in P.SECTIONS:
        default = P.to_plain(P.parse(P.section_class(name), {}, name))
        file = P.to_plain(shipped.sections[name])

        def walk(a, b, where):
            if isinstance(a, dict) and isinstance(b, dict):
                for k in sorted(set(a) | set(b)):
                    walk(a.get(k), b.get(k), f"{where}.{k}")
            elif a != b:
                differ.append(f"{where}: code {a!r} != params.yaml {b!r}")

        walk(default, file, name)
    assert not differ, "\n".join(differ)

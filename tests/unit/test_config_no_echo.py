"""Config errors never quote a file's text (it may be a symlink to a file of secrets), also with PyYAML's pure-Python
parser, whose messages quote aliases, anchors and tags (libyaml's do not; the loader uses libyaml when present)."""

from __future__ import annotations

import pytest
import yaml

import ha.config.load as config_module
from ha.config import ConfigErrors, parse_config_text
from tests.adversarial.test_local_users import SECRETS, fragments

EXTRA = {
    "anchor-twice": "a: &s3cr3t-anchor-0050 1\nb: &s3cr3t-anchor-0050 2\n",
    "directive": "%S3CR3T-DIRECTIVE-0051 x\n---\na: 1\n",
    "long-key": "node:\n  f3a9c2b18e7d4a6f9c2b18e7d4a6f9c2: 1\n",
}


@pytest.mark.parametrize("loader", ["python", "libyaml"])
def test_no_error_quotes_the_text(monkeypatch: pytest.MonkeyPatch, loader: str) -> None:
    if loader == "python":
        monkeypatch.setattr(config_module, "_LOADER", yaml.SafeLoader)
    elif not hasattr(yaml, "CSafeLoader"):
        pytest.skip("PyYAML built without libyaml")
    for kind, text in {**SECRETS, **EXTRA}.items():
        with pytest.raises(ConfigErrors) as ei:
            parse_config_text(text, filename="secrets.yaml")
        out = "\n".join(str(i) for i in ei.value.errors + ei.value.warnings)
        assert out.startswith("secrets.yaml:"), out
        for frag in fragments(text):
            assert frag not in out, f"{kind}: {frag!r} quoted in:\n{out}"


def test_known_keys_still_say_what_they_got() -> None:
    """Short values of known keys and names of unknown keys stay in the messages: they help, and are config."""
    with pytest.raises(ConfigErrors) as ei:
        parse_config_text("node: {dataplane: ipvz, nmae: x}\n", filename="c.yaml")
    out = "\n".join(map(str, ei.value.errors))
    assert "'ipvz' is not one of" in out and "did you mean 'ipvs'" in out, out
    assert "node.nmae: unknown key 'nmae'; did you mean 'name'" in out, out

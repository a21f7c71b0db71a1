"""The Debian package's generated documents (deploy/debian/docgen.py): lvs-ha(8) names every command and option of
the command line parser, lvs-ha.yaml(5) every key of deploy/config-reference.md, the bash completion completes every
command and option; all three are made from those sources at build time, so they cannot drift. And the systemd unit
the package installs: its reload runs ``lvs-ha reload`` and its documentation is installed."""

from __future__ import annotations

import argparse
import importlib.util
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from ha.cli import COMMANDS, build_parser

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = ROOT / "deploy" / "config-reference.md"
UNITS = sorted((ROOT / "deploy" / "systemd").glob("*.service"))


def _load_docgen() -> ModuleType:
    spec = importlib.util.spec_from_file_location("lvs_ha_docgen", ROOT / "deploy" / "debian" / "docgen.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


docgen = _load_docgen()


@pytest.fixture(scope="module")
def pages() -> dict[str, str]:
    return dict(docgen.generate(REFERENCE, "9.8.7", "2000-01-02"))


def deroff(roff: str) -> str:
    """The text a reader sees, roughly: requests dropped, font and escape sequences resolved, lines joined."""
    text = []
    for line in roff.splitlines():
        if line.startswith((".TH", '.\\"')) or re.fullmatch(r"\.(PP|TP|RS.*|RE|nf|fi|nh|ad.*|IP.*|B)", line):
            continue
        line = re.sub(r"^\.(SH|SS|B) ", "", line)
        line = re.sub(r"\\f[BIRP]", "", line).replace("\\-", "-").replace("\\e", "\\").replace("\\&", "")
        text.append(line.replace("\\(bu", "*").strip('"'))
    return "\n".join(text)


def option_strings(parser: argparse.ArgumentParser) -> list[str]:
    return [o for a in parser._actions for o in a.option_strings]


# ------------------------------------------------------------------------------------------------------ lvs-ha(8) ---


def test_cli_page_names_every_command_and_option(pages: dict[str, str]) -> None:
    page = pages["lvs-ha.8"]
    text = deroff(page)
    assert page.startswith('.TH "LVS-HA" "8" "2000-01-02" "lvs-ha 9.8.7"')
    subs = docgen.subcommands(build_parser())
    assert list(subs) == list(COMMANDS)
    for name, (help_text, _args, _target) in COMMANDS.items():
        assert f".SS {name.replace('-', chr(92) + '-')}\n" in page, f"no section for lvs-ha {name}"
        assert help_text in text, name
        section = text.split(f"\n{name}\nlvs-ha {name}", 1)[1].split("\n.SS", 1)[0]
        for option in option_strings(subs[name]):
            if option not in ("-h", "--help"):
                assert option in section, f"lvs-ha {name} {option} is not in lvs-ha(8)"
    for option in option_strings(build_parser()):
        assert option in text
    assert "lvs-ha.yaml(5)" in text and "EXIT STATUS" in text


def test_every_exit_status_is_described(pages: dict[str, str]) -> None:
    import ha.cli

    codes = {name: value for name, value in vars(ha.cli).items() if name.startswith("EXIT_")}
    assert set(codes) == set(docgen.EXIT_STATUS), "an exit status of ha.cli has no description in docgen.EXIT_STATUS"
    text = deroff(pages["lvs-ha.8"]).split("EXIT STATUS", 1)[1]
    for name, code in codes.items():
        assert f"\n{code}\n{docgen.EXIT_STATUS[name]}" in text


def test_cli_page_follows_the_parser() -> None:
    """A command or option added to the parser is in the page without anyone touching the generator."""
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    new = sub.add_parser("frobnicate", help="a command that does not exist yet")
    new.add_argument("--widgets", metavar="N", help="how many widgets")
    text = deroff(docgen.cli_page(parser, {}, {}, "1", "2000-01-01"))
    assert "lvs-ha frobnicate [--widgets N]" in text and "how many widgets" in text


# ------------------------------------------------------------------------------------------------ lvs-ha.yaml(5) ---


def reference_keys(md: str) -> list[str]:
    """Every key the reference's tables define: the code spans of each row's first cell."""
    keys = []
    for line in md.splitlines():
        if line.startswith("|") and not re.match(r"\|\s*(key\s*\||-)", line):
            keys += re.findall(r"`([^`]+)`", line.strip("|").split("|")[0])
    return keys


def test_config_page_names_every_key_and_section(pages: dict[str, str]) -> None:
    md = REFERENCE.read_text(encoding="utf-8")
    page = pages["lvs-ha.yaml.5"]
    text = deroff(page)
    keys = reference_keys(md)
    assert len(keys) > 100 and "api.socket" in keys and "conntrack_sync.peer" in keys
    for key in keys:
        assert re.search(rf"(^|[\s(]){re.escape(key)}($|[\s,.)])", text, re.M), f"{key} is not in lvs-ha.yaml(5)"
    for heading in re.findall(r"^##+ (.+)$", md, re.M):
        title = docgen.plain(heading)
        assert title in text or title.upper() in text, heading
    # the code blocks keep their lines
    assert "lvs-ha check-config -c dir1.yaml -c dir2.yaml" in text


def test_config_page_follows_the_reference() -> None:
    md = "## `node`\n\n| key | default | valid | notes |\n|---|---|---|---|\n| `brand_new` | `7` | 1..9 | a new key |\n"
    text = deroff(docgen.config_page(md, "1", "2000-01-01"))
    assert "brand_new" in text and "Default: 7." in text and "Valid: 1..9." in text and "a new key" in text


def test_roff_escapes_what_would_be_requests_or_escapes() -> None:
    out = docgen.markdown_to_roff("```\n.not a request\n'nor this\nback\\slash\n```\n")
    assert "\\&.not a request" in out and "\\&'nor this" in out and "back\\eslash" in out


@pytest.mark.skipif(shutil.which("groff") is None, reason="groff is not installed (Debian package groff-base)")
@pytest.mark.parametrize("name", ["lvs-ha.8", "lvs-ha.yaml.5"])
def test_pages_render_without_warnings(pages: dict[str, str], name: str) -> None:
    r = subprocess.run(
        ["groff", "-man", "-ww", "-z", "-Tutf8"], input=pages[name], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0 and r.stderr == "", r.stderr


# ------------------------------------------------------------------------------------------------ bash completion ---


def complete(script: str, words: list[str], tmp: Path) -> list[str]:
    """COMPREPLY of the completion function for the command line ``words`` (the last one being completed)."""
    path = tmp / "lvs-ha.bash"
    path.write_text(script)
    line = " ".join(shlex.quote(w) for w in words)
    prog = f"""source {shlex.quote(str(path))}
COMP_WORDS=({line}); COMP_CWORD={len(words) - 1}
_lvs_ha; printf '%s\\n' "${{COMPREPLY[@]}}" """
    r = subprocess.run(["bash", "--norc", "-c", prog], capture_output=True, text=True, timeout=30, cwd=tmp)
    assert r.returncode == 0, r.stderr
    return [w for w in r.stdout.splitlines() if w]


@pytest.mark.skipif(shutil.which("bash") is None, reason="no bash")
def test_bash_completion(pages: dict[str, str], tmp_path: Path) -> None:
    script = pages["lvs-ha.bash-completion"]
    assert subprocess.run(["bash", "-n"], input=script, text=True, timeout=30).returncode == 0
    assert "complete -F _lvs_ha lvs-ha" in script
    assert set(COMMANDS) <= set(complete(script, ["lvs-ha", ""], tmp_path))
    assert complete(script, ["lvs-ha", "che"], tmp_path) == ["check-config"]
    subs = docgen.subcommands(build_parser())
    for name, sub in subs.items():
        offered = set(complete(script, ["lvs-ha", name, "-"], tmp_path))
        assert set(option_strings(sub)) <= offered, name
    assert complete(script, ["lvs-ha", "plan", "--dataplane", ""], tmp_path) == ["auto", "ipvs", "nftables", "memory"]
    (tmp_path / "dir1.yaml").write_text("")
    assert complete(script, ["lvs-ha", "check-config", "-c", "dir"], tmp_path) == ["dir1.yaml"]
    assert complete(script, ["lvs-ha", "status", "--timeout", ""], tmp_path) == []


# ------------------------------------------------------------------------------------------------ the systemd unit ---


def unit_settings(path: Path) -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.startswith(("#", ";", "[")):
            key, value = line.split("=", 1)
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def test_unit_reload_runs_lvs_ha_reload_and_documents_the_man_pages() -> None:
    """``systemctl reload`` must fail when the daemon rejects the new config: a SIGHUP cannot tell, ``lvs-ha reload``
    exits 1 then. The pages named in Documentation= are the ones the package installs."""
    assert any(u.name == "lvs-ha.service" for u in UNITS)
    main = unit_settings(ROOT / "deploy" / "systemd" / "lvs-ha.service")
    (reload,) = main["ExecReload"]
    argv = shlex.split(reload)
    assert argv[:2] == ["/usr/bin/lvs-ha", "reload"], reload
    start = shlex.split(main["ExecStart"][0])
    assert start[0] == argv[0] and start[start.index("-c") + 1] == argv[argv.index("-c") + 1]
    docs = " ".join(main["Documentation"]).split()
    assert "man:lvs-ha(8)" in docs and "man:lvs-ha.yaml(5)" in docs
    for unit in UNITS:
        for key in ("ExecStart", "ExecStartPre", "ExecReload", "ExecStop"):
            for value in unit_settings(unit).get(key, []):
                exe = shlex.split(value.lstrip("-@+!:"))[0]
                assert not exe.startswith("/usr/local/"), f"{unit.name} {key}: the package installs /usr/bin/lvs-ha"


def test_realserver_unit_runs_setup_and_undo_of_the_command() -> None:
    """lvs-ha-realserver.service: a oneshot that stays active, setup on start, undo on stop, both valid command
    lines of the parser, the file its ExecStart names being the one the man page lists."""
    unit = unit_settings(ROOT / "deploy" / "systemd" / "lvs-ha-realserver.service")
    assert unit["Type"] == ["oneshot"] and unit["RemainAfterExit"] == ["yes"]
    start, stop = shlex.split(unit["ExecStart"][0]), shlex.split(unit["ExecStop"][0])
    assert start[:3] == ["/usr/bin/lvs-ha", "realserver", "setup"] and stop[:3] == [
        "/usr/bin/lvs-ha",
        "realserver",
        "undo",
    ]
    for argv in (start, stop):
        args = build_parser().parse_args(argv[1:])
        assert args.command == "realserver"
    assert build_parser().parse_args(start[1:]).config == "/etc/lvs-ha/realserver.yaml"
    text = deroff(dict(docgen.generate(REFERENCE, "1", "2000-01-01"))["lvs-ha.8"])
    assert "/etc/lvs-ha/realserver.yaml" in text and "lvs-ha-realserver.service" in text

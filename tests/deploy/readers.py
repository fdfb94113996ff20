"""Readers of the files in deploy/: the compose file as Docker Compose interpolates it,
the Caddyfile's blocks, a Dockerfile's instructions, and the infermesh CLI they call."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import typer.main
import yaml

from infermesh.cli import app

# Compose's interpolation: $$, $NAME, ${NAME}, ${NAME:-default}, ${NAME-default},
# ${NAME:?error}, ${NAME?error}, ${NAME:+alternative}, ${NAME+alternative}.
ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
DOCKERFILES = ("Dockerfile", "Dockerfile.cuda")

_VARIABLE = re.compile(
    r"\$(?:(?P<escaped>\$)"
    r"|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}"
    r"|(?P<named>[A-Za-z_][A-Za-z0-9_]*))"
)


class UnsetVariable(Exception):
    """A ``${NAME:?error}`` whose variable is unset (or empty)."""


def read_env_file(path: Path) -> dict[str, str]:
    """``NAME=value`` lines of an env file, as compose reads them (no quotes used here)."""
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, _, value = line.partition("=")
            values[name.strip()] = value.strip()
    return values


def interpolate(value: str, env: Mapping[str, str], used: set[str]) -> str:
    """``value`` with its variables replaced from ``env``; their names go into ``used``."""

    def replace(match: re.Match[str]) -> str:
        if match["escaped"]:
            return "$"
        name = match["braced"] or match["named"]
        used.add(name)
        op, arg = match["op"], match["arg"] or ""
        present = name in env
        filled = present and env[name] != ""
        if op is None:
            return env.get(name, "")
        if op in (":?", "?"):
            if not (filled if op == ":?" else present):
                raise UnsetVariable(f"{name}: {arg}")
            return env[name]
        if op in (":-", "-"):
            return env[name] if (filled if op == ":-" else present) else arg
        return arg if (filled if op == ":+" else present) else ""

    return _VARIABLE.sub(replace, value)


def interpolate_tree(node: Any, env: Mapping[str, str], used: set[str]) -> Any:
    """A parsed YAML document with every string value interpolated (keys are not)."""
    if isinstance(node, str):
        return interpolate(node, env, used)
    if isinstance(node, dict):
        return {key: interpolate_tree(value, env, used) for key, value in node.items()}
    if isinstance(node, list):
        return [interpolate_tree(item, env, used) for item in node]
    return node


def load_compose(path: Path, env: Mapping[str, str]) -> tuple[dict[str, Any], set[str]]:
    """The compose file, anchors and merge keys resolved, interpolated from ``env``; and
    the names of the variables it uses."""
    used: set[str] = set()
    document = interpolate_tree(yaml.safe_load(path.read_text()), env, used)
    return document, used


def environment(service: Mapping[str, Any]) -> dict[str, str]:
    """A service's ``environment``, given as a mapping or as ``NAME=value`` items."""
    given = service.get("environment") or {}
    if isinstance(given, list):
        return dict(item.partition("=")[::2] for item in given)
    return {name: "" if value is None else str(value) for name, value in given.items()}


def command_args(service: Mapping[str, Any]) -> list[str]:
    command = service.get("command") or []
    return command.split() if isinstance(command, str) else [str(arg) for arg in command]


@dataclass
class Block:
    """One Caddyfile line (its tokens) and, if it opens one, the block under it."""

    tokens: list[str]
    children: list[Block] = field(default_factory=list)

    def walk(self) -> Iterator[Block]:
        yield self
        for child in self.children:
            yield from child.walk()


def parse_caddyfile(text: str) -> list[Block]:
    """The Caddyfile's top-level blocks; braces must balance."""
    root: list[Block] = []
    stack = [root]
    for raw in text.splitlines():
        tokens = re.sub(r"(^|\s)#.*$", "", raw).split()
        if not tokens:
            continue
        if tokens == ["}"]:
            stack.pop()
            assert stack, "a '}' without its '{' in the Caddyfile"
            continue
        opens = tokens[-1] == "{"
        block = Block(tokens[:-1] if opens else tokens)
        stack[-1].append(block)
        if opens:
            stack.append(block.children)
    assert len(stack) == 1, "a '{' without its '}' in the Caddyfile"
    return root


@dataclass(frozen=True)
class Instruction:
    keyword: str
    arguments: str


def parse_dockerfile(text: str) -> list[Instruction]:
    """A Dockerfile's instructions, continuation lines joined, comments left out."""
    instructions: list[Instruction] = []
    pending = ""
    for line in text.splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        keyword, _, arguments = (pending + line).strip().partition(" ")
        instructions.append(Instruction(keyword.upper(), " ".join(arguments.split())))
        pending = ""
    return instructions


def instructions(dockerfile: str, keyword: str | None = None) -> list[Instruction]:
    """The instructions of ``deploy/<dockerfile>``, or only those of ``keyword``."""
    parsed = parse_dockerfile((DEPLOY / dockerfile).read_text())
    return [item for item in parsed if keyword in (None, item.keyword)]


def exec_form(instruction: Instruction) -> list[str]:
    """The JSON array of an exec-form ENTRYPOINT, CMD or HEALTHCHECK CMD."""
    arguments = instruction.arguments.removeprefix("CMD ").strip()
    parsed = json.loads(arguments[arguments.index("[") :])
    assert isinstance(parsed, list), instruction
    return [str(item) for item in parsed]


def infermesh_command() -> Any:
    """The click command behind ``infermesh`` (typer brings its own click: these
    helpers read its commands and options by their attributes)."""
    return typer.main.get_command(app)


def resolve(args: list[str]) -> tuple[list[str], Any, list[str]]:
    """The subcommand ``infermesh ARGS`` runs: its path, the command, the args left."""
    command = infermesh_command()
    path: list[str] = []
    rest = list(args)
    while hasattr(command, "commands") and rest and not rest[0].startswith("-"):
        found = command.commands.get(rest[0])
        assert found is not None, f"no command 'infermesh {' '.join([*path, rest[0]])}'"
        command, path = found, [*path, rest.pop(0)]
    return path, command, rest


def option_names(command: Any) -> set[str]:
    names = {"--help"}
    for param in command.params:
        if param.param_type_name == "option":
            names.update(param.opts, param.secondary_opts)
    return names


def cli_environment_names() -> set[str]:
    """The environment variables the CLI's options read (``envvar=``)."""
    names: set[str] = set()
    pending = [infermesh_command()]
    while pending:
        command = pending.pop()
        pending.extend(getattr(command, "commands", {}).values())
        for param in command.params:
            envvar = param.envvar
            names.update([envvar] if isinstance(envvar, str) else envvar or [])
    return names

"""deploy/ stays valid: the compose file, the Caddyfile, the Dockerfiles, .env.example and
OPERATIONS.md, checked against each other and against infermesh's own CLI, settings and
metrics.

Docker Compose's own check (`docker compose config`) runs where Compose is installed.
Everywhere, the compose file is interpolated from .env.example as Compose does, validated
against the Compose Specification schema that check-jsonschema bundles (offline), and
read structurally with PyYAML.
"""

from __future__ import annotations

import importlib.resources
import json
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from typer.testing import CliRunner

from infermesh.catalog.store import CatalogFile
from infermesh.cli import app
from infermesh.config import Settings
from infermesh.telemetry import Metrics
from tests.deploy.readers import (
    DEPLOY,
    DOCKERFILES,
    ROOT,
    Block,
    UnsetVariable,
    cli_environment_names,
    command_args,
    environment,
    exec_form,
    instructions,
    load_compose,
    option_names,
    parse_caddyfile,
    read_env_file,
    resolve,
)

COMPOSE_FILE = DEPLOY / "docker-compose.yml"
GATEWAY_PORT = 8000
GATEWAYS = ("gateway-1", "gateway-2")
SERVICES = {"postgres", "redis", "migrate", *GATEWAYS, "lb", "worker", "cli"}
SECRET = re.compile(r"PASSWORD|SECRET|KEY|TOKEN")


@pytest.fixture(scope="module")
def env_example() -> dict[str, str]:
    return read_env_file(DEPLOY / ".env.example")


@pytest.fixture(scope="module")
def filled_env(env_example: dict[str, str]) -> dict[str, str]:
    """.env.example as an operator fills it: every empty value given one."""
    return {name: value or f"filled-{name.lower()}" for name, value in env_example.items()}


@pytest.fixture(scope="module")
def compose(filled_env: dict[str, str]) -> dict[str, Any]:
    document, _ = load_compose(COMPOSE_FILE, filled_env)
    return document


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = compose["services"]
    return found


def _docker_compose_available() -> bool:
    if shutil.which("docker") is None:
        return False
    probe = subprocess.run(["docker", "compose", "version"], capture_output=True, check=False)
    return probe.returncode == 0


def test_docker_compose_accepts_the_file(filled_env: dict[str, str], tmp_path: Path) -> None:
    if not _docker_compose_available():
        pytest.skip("docker compose is not installed: the schema and structure tests stand")
    env_file = tmp_path / ".env"
    env_file.write_text("".join(f"{name}={value}\n" for name, value in filled_env.items()))
    compose = ["docker", "compose", "-f", str(COMPOSE_FILE), "--env-file", str(env_file)]
    for profiles in ([], ["--profile", "worker", "--profile", "tools"]):
        subprocess.run([*compose, *profiles, "config", "-q"], check=True)


def test_compose_file_matches_the_compose_specification(compose: dict[str, Any]) -> None:
    vendored = importlib.resources.files("check_jsonschema.builtin_schemas.vendor")
    schema = json.loads((vendored / "compose-spec.json").read_text())
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = [
        f"{list(error.absolute_path)}: {error.message}" for error in validator.iter_errors(compose)
    ]
    assert errors == []


def test_required_variables_stop_compose_when_unset(env_example: dict[str, str]) -> None:
    with pytest.raises(UnsetVariable, match=r"POSTGRES_PASSWORD|INFERMESH_PEER_SECRET"):
        load_compose(COMPOSE_FILE, env_example)


def test_every_variable_is_in_env_example_and_secrets_are_blank(
    env_example: dict[str, str],
) -> None:
    _, used = load_compose(COMPOSE_FILE, {name: "x" for name in env_example})
    assert used - env_example.keys() == set(), "used in docker-compose.yml, not in .env.example"
    unused = {name for name in env_example.keys() - used if not name.startswith("COMPOSE_")}
    assert unused == set(), "in .env.example, used nowhere"
    published = {
        name: value for name, value in env_example.items() if SECRET.search(name) and value
    }
    assert published == {}, "a secret in .env.example would be deployed as it is"


def test_services_and_their_dependencies(services: dict[str, dict[str, Any]]) -> None:
    assert services.keys() >= SERVICES
    for name, service in services.items():
        for target, rule in (service.get("depends_on") or {}).items():
            assert target in services, f"{name} depends on unknown {target}"
            condition = rule["condition"]
            if condition == "service_healthy":
                assert _healthcheck(services[target]), f"{name} waits for {target}'s health"
            elif condition == "service_completed_successfully":
                assert services[target].get("restart") == "no", f"{target} is not a one-shot"
            else:
                assert condition == "service_started", (name, target, condition)
    for gateway in GATEWAYS:
        depends = services[gateway]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully"
        assert (
            depends["postgres"]["condition"] == depends["redis"]["condition"] == "service_healthy"
        )
    assert command_args(services["migrate"]) == ["db", "upgrade"]
    _assert_no_cycle(services)


def _assert_no_cycle(services: dict[str, dict[str, Any]]) -> None:
    done: set[str] = set()

    def visit(name: str, path: tuple[str, ...]) -> None:
        assert name not in path, f"depends_on cycle: {' -> '.join((*path, name))}"
        if name not in done:
            for target in services[name].get("depends_on") or {}:
                visit(target, (*path, name))
            done.add(name)

    for name in services:
        visit(name, ())


def _healthcheck(service: dict[str, Any]) -> list[str] | None:
    check = service.get("healthcheck") or {}
    return None if check.get("disable") else check.get("test")


def test_healthchecks(services: dict[str, dict[str, Any]]) -> None:
    for name in ("postgres", "redis", "lb", *GATEWAYS):
        assert _healthcheck(services[name]), f"{name} has no health check"
    for name in GATEWAYS:
        assert f"127.0.0.1:{GATEWAY_PORT}/health" in " ".join(_healthcheck(services[name]) or [])
    assert "/health" in " ".join(_healthcheck(services["lb"]) or [])
    for name in ("worker", "migrate", "cli"):  # no port to probe, or not long-lived
        assert services[name]["healthcheck"] == {"disable": True}


def test_published_ports(services: dict[str, dict[str, Any]]) -> None:
    lb_ports = {str(port).rsplit(":", 1)[-1] for port in services["lb"]["ports"]}
    assert lb_ports == {"80", "443"}
    for name in GATEWAYS:
        for port in services[name].get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} published beyond the host"
            assert str(port).endswith(f":{GATEWAY_PORT}")
    for name in ("postgres", "redis", "worker", "migrate", "cli"):
        assert "ports" not in services[name], f"{name} must not be published"


def test_gateways_share_the_stores_and_form_one_network(
    services: dict[str, dict[str, Any]], filled_env: dict[str, str]
) -> None:
    envs = {name: environment(services[name]) for name in GATEWAYS}
    for shared in (
        "INFERMESH_DATABASE_URL",
        "INFERMESH_REDIS_URL",
        "INFERMESH_PEER_SECRET",
        "INFERMESH_ADMIN_KEY",
        "INFERMESH_CONFIG",
    ):
        assert len({env[shared] for env in envs.values()}) == 1, f"{shared} differs"
    for name, env in envs.items():
        assert env["INFERMESH_PEER_URL"] == f"http://{name}:{GATEWAY_PORT}"
        assert services[name]["volumes"] == services["cli"]["volumes"]  # one catalog
        args = command_args(services[name])
        assert args[:1] == ["serve"] and "--no-worker" in args
        assert args[args.index("--host") + 1] == "0.0.0.0"
        assert {"postgres", "redis", "lb"} <= _neighbours(services, name)
    env = envs[GATEWAYS[0]]
    postgres = environment(services["postgres"])
    user, database = postgres["POSTGRES_USER"], postgres["POSTGRES_DB"]
    password = filled_env["POSTGRES_PASSWORD"]
    url = f"postgresql+asyncpg://{user}:{password}@postgres:5432/{database}"
    assert env["INFERMESH_DATABASE_URL"] == url
    assert env["INFERMESH_REDIS_URL"].startswith("redis://redis:6379/")
    for name in ("migrate", "cli"):
        assert environment(services[name])["INFERMESH_DATABASE_URL"] == url


def _neighbours(services: dict[str, dict[str, Any]], name: str) -> set[str]:
    networks = set(services[name]["networks"])
    return {other for other, service in services.items() if networks & set(service["networks"])}


def test_worker_reaches_the_gateways_through_the_load_balancer(
    services: dict[str, dict[str, Any]],
) -> None:
    worker = services["worker"]
    args = command_args(worker)
    urls = [args[index + 1] for index, arg in enumerate(args) if arg == "--gateway"]
    assert urls == ["http://lb"]
    assert _neighbours(services, "worker") == {"worker", "lb"}  # no data store, no gateway
    raw = COMPOSE_FILE.read_text()
    assert "INFERMESH_WORKER_TOKEN: ${INFERMESH_WORKER_TOKEN" in raw
    served = {args[index + 1].split("=")[0] for index, arg in enumerate(args) if arg == "--serve"}
    catalog = {spec.id for spec in CatalogFile(DEPLOY / "models.toml").load()}
    assert served and served <= catalog


def test_mounted_files_and_volumes_exist(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).is_file(), f"{name} mounts a missing {source}"
            else:
                assert source in compose["volumes"], f"{name}: volume {source} not declared"
        for network in service.get("networks", []):
            assert network in compose["networks"]
        build = service.get("build")
        if build:
            assert (DEPLOY / build["context"] / build["dockerfile"]).is_file()


def test_environment_names_are_infermesh_settings(compose: dict[str, Any]) -> None:
    known = {f"INFERMESH_{name.upper()}" for name in Settings.model_fields}
    known |= cli_environment_names()
    texts = [(DEPLOY / name).read_text() for name in ("OPERATIONS.md", ".env.example")]
    named = set(re.findall(r"\bINFERMESH_[A-Z0-9_]+\b", "\n".join(texts)))
    for service in compose["services"].values():
        named |= {name for name in environment(service) if name.startswith("INFERMESH_")}
    assert named - known == set(), "not a setting nor a CLI option's variable"


def _documented_commands() -> list[tuple[str, list[str]]]:
    """``docker compose run --rm SERVICE ARGS`` as written in deploy/'s files."""
    pattern = re.compile(r"docker compose run --rm (?:-e \S+ )*(cli|migrate)\b([^`\n#]*)")
    found = []
    for name in ("OPERATIONS.md", ".env.example", "docker-compose.yml"):
        text = (DEPLOY / name).read_text()
        if name != "OPERATIONS.md":  # there, the commands are in comments that wrap
            text = re.sub(r"\n#\s*", " ", text)
        for service, args in pattern.findall(text):
            if args.split()[:1] != ["..."]:  # "cli ...": any command
                found.append((service, shlex.split(args)))
    return found


def _infermesh_commands(services: dict[str, dict[str, Any]]) -> list[list[str]]:
    commands = [command_args(service) for service in services.values() if service.get("build")]
    for service, args in _documented_commands():
        commands.append(args or command_args(services[service]))
    for dockerfile in DOCKERFILES:
        cmd = instructions(dockerfile, "CMD")[-1]
        commands.append(exec_form(cmd))
    return commands


def test_every_infermesh_command_and_option_exists(services: dict[str, dict[str, Any]]) -> None:
    commands = _infermesh_commands(services)
    assert len(commands) > 10
    runner = CliRunner()
    for args in commands:
        path, command, rest = resolve(args)
        given = {arg.split("=")[0] for arg in rest if arg.startswith("--")}
        assert given <= option_names(command), f"infermesh {' '.join(args)}"
        shown = runner.invoke(app, [*path, "--help"])
        assert shown.exit_code == 0, shown.output
        for option in given:
            assert option in shown.output, f"{option} not in 'infermesh {' '.join(path)} --help'"


def _caddy_blocks() -> list[Block]:
    return parse_caddyfile((DEPLOY / "Caddyfile").read_text())


def _caddy_directives(block: Block) -> dict[str, list[str]]:
    return {child.tokens[0]: child.tokens[1:] for child in block.children}


def test_caddy_routes_to_every_gateway_with_health_checks(
    services: dict[str, dict[str, Any]],
) -> None:
    blocks = _caddy_blocks()
    snippet = next(block for block in blocks if block.tokens == ["(gateways)"])
    proxy = next(child for child in snippet.children if child.tokens[0] == "reverse_proxy")
    assert set(proxy.tokens[1:]) == {f"{name}:{GATEWAY_PORT}" for name in GATEWAYS}
    settings = _caddy_directives(proxy)
    assert settings["health_uri"] == ["/health"]
    assert settings["health_status"] == ["200"]
    assert {"health_interval", "health_timeout", "lb_try_duration", "lb_policy"} <= settings.keys()
    sites = [block for block in blocks if block.tokens and not block.tokens[0].startswith("(")]
    assert {tuple(site.tokens) for site in sites} == {("{$SITE_ADDRESS::80}",), ("http://lb",)}
    for site in sites:
        assert [child.tokens for child in site.children] == [["import", "gateways"]]
    placeholders = set(re.findall(r"\{\$([A-Z_]+)", (DEPLOY / "Caddyfile").read_text()))
    assert placeholders <= environment(services["lb"]).keys()
    assert "./Caddyfile:/etc/caddy/Caddyfile:ro" in services["lb"]["volumes"]


def test_caddy_passes_websockets_and_sse_and_hides_internal_routes() -> None:
    snippet = next(block for block in _caddy_blocks() if block.tokens == ["(gateways)"])
    proxy = next(child for child in snippet.children if child.tokens[0] == "reverse_proxy")
    settings = _caddy_directives(proxy)
    assert settings["flush_interval"] == ["-1"]  # SSE chunks unbuffered
    assert "stream_close_delay" in settings  # worker WebSockets survive a reload
    assert "stream_timeout" not in settings  # no cut-off for long-lived WebSockets
    assert "encode" not in _caddy_directives(snippet)  # compression would buffer SSE
    directives = [child.tokens for child in snippet.children]
    assert ["@private", "path", "/internal/*", "/metrics"] in directives
    assert ["respond", "@private", "404"] in directives


def test_caddy_adapts_the_file(tmp_path: Path) -> None:
    caddy = shutil.which("caddy")
    if caddy is None:
        pytest.skip("caddy is not installed: the Caddyfile tests above read it as text")
    config = (DEPLOY / "Caddyfile").read_text()
    version = subprocess.run([caddy, "version"], capture_output=True, text=True, check=True)
    if tuple(int(part) for part in re.findall(r"\d+", version.stdout)[:2]) < (2, 7):
        config = re.sub(r"\n\s*stream_close_delay .*", "", config)  # Caddy 2.7's
    path = tmp_path / "Caddyfile"
    path.write_text(config)
    adapted = subprocess.run(
        [caddy, "adapt", "--config", str(path), "--adapter", "caddyfile"],
        capture_output=True,
        text=True,
        check=True,
        env={"SITE_ADDRESS": ":80", "HOME": str(tmp_path)},
    )
    routes = json.loads(adapted.stdout)["apps"]["http"]["servers"]["srv0"]["routes"]
    assert {json.dumps(route).count('"dial"') for route in routes} == {len(GATEWAYS)}


def test_operations_page_names_real_metrics() -> None:
    names: set[str] = set()
    for family in Metrics().registry.collect():
        suffixes = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count")}
        names |= {family.name, *(family.name + suffix for suffix in suffixes.get(family.type, ()))}
    mentioned = set(re.findall(r"\binfermesh_[a-z_]+\b", (DEPLOY / "OPERATIONS.md").read_text()))
    assert mentioned, "OPERATIONS.md names no metric"
    assert mentioned <= names


def test_readme_points_to_deploy_after_its_first_two_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", readme, flags=re.DOTALL)
    assert "infermesh serve" in blocks[0] and "python -m pytest" in blocks[1]
    pointer = readme.index("deploy/OPERATIONS.md")
    assert pointer > readme.index(blocks[1])

"""Configuration: the original's format unchanged, the richer form, and errors that name file:line: key."""

import base64
import textwrap

import pytest

from nomyo.config import TOP_KEYS, ConfigError, load_config, parse_listen
from nomyo.names import normalize_model


def write(tmp_path, text):
    path = tmp_path / "config.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def test_original_format_is_accepted_unchanged(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_KEY", "sk-test")
    path = write(tmp_path, """\
        # config.yaml
        endpoints:
          - http://192.168.0.50:11434
          - http://192.168.0.51:11434
          - https://api.openai.com/v1
        llama_server_endpoints:
          - http://localhost:8080/v1
        max_concurrent_connections: 2
        nomyo-router-api-key: ""
        api_keys:
          "http://192.168.0.50:11434": "ollama"
          "https://api.openai.com/v1": "${OPENAI_KEY}"
          "http://localhost:8080/v1": "llama-server"
        cache_enabled: false
        """)
    config = load_config(path)
    by_url = {e.url: e for e in config.endpoints}
    assert [e.type for e in config.endpoints] == ["ollama", "ollama", "openai", "llama-server"]
    assert all(e.max_concurrent_connections == 2 for e in config.endpoints)
    assert by_url["http://192.168.0.50:11434"].api_key == "ollama"
    assert by_url["http://192.168.0.51:11434"].api_key is None
    assert by_url["https://api.openai.com/v1"].api_key == "sk-test"
    assert by_url["http://localhost:8080/v1"].api_key == "llama-server"
    assert config.router_api_keys == {}
    assert config.listen == "127.0.0.1:12434"
    assert config.cache.enabled is False and not config.warnings


def test_rich_endpoint_form(tmp_path, monkeypatch):
    monkeypatch.setenv("GPU_KEY", "secret")
    path = write(tmp_path, """\
        listen: 0.0.0.0:9000
        max_concurrent_connections: 3
        endpoints:
          - name: gpu1
            url: http://gpu1:11434/
            max_concurrent_connections: 4
            model_slots: {"Llama3": 1}
            api_key: ${GPU_KEY}
          - http://gpu2:11434
          - name: vllm
            url: http://vllm:8000/v1
            type: openai
        """)
    config = load_config(path)
    gpu1, gpu2, vllm = config.endpoints
    assert (gpu1.name, gpu1.url, gpu1.api_key) == ("gpu1", "http://gpu1:11434", "secret")
    assert gpu1.slots_for("llama3:latest") == 1 and gpu1.slots_for("other:latest") == 4
    assert gpu2.max_concurrent_connections == 3 and gpu2.name == "gpu2:11434"
    assert vllm.type == "openai"
    assert (config.listen_host, config.listen_port) == ("0.0.0.0", 9000)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("endpoints: [http://a:1]\nbogus: 1\n", ":2: bogus: unknown key"),
        ("endpoints:\n  - http://a:1\nmax_concurrent_connections: zero\n",
         ":3: max_concurrent_connections: must be a number"),
        ("endpoints:\n  - http://a:1\nmax_concurrent_connections: 0\n",
         ":3: max_concurrent_connections: must be at least 1"),
        ("endpoints:\n  - ftp://a\n", ":2: endpoints[0]: must be an http:// or https:// URL"),
        ("endpoints:\n  - name: x\n    url: http://a:1\n    color: red\n", ":4: endpoints[0].color: unknown key"),
        ("endpoints:\n  - name: x\n    url: http://a:1\n    type: grpc\n", ":4: endpoints[0].type: must be one of"),
        ("endpoints:\n  - name: x\n", ":2: endpoints[0].url: is required"),
        ("listen: nowhere\n", ":1: listen: must be host:port"),
        ("endpoints: [http://a:1, http://a:1]\n", "two endpoints are named 'a:1'"),
        ("endpoints: [http://a:1\n", "invalid YAML"),
    ],
)
def test_errors_name_file_line_and_key(tmp_path, text, expected):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(str(path))
    assert expected in str(info.value)


def test_every_error_in_the_file_is_reported_at_once(tmp_path):
    """A file with a mistake on nearly every line: one ConfigError lists each (file:line: key:
    what) in the order of the lines, so the operator fixes them all in one go."""

    path = write(tmp_path, """\
        listen: nowhere
        endpoints:
          - http://a:11434
          - ftp://b
          - name: c
            max_concurrent_connections: 0
            model_slots: {"x": "two"}
          - 42
          - http://a:11434
        max_queue: -1
        bogus: 1
        router_api_keys:
          ops: ""
        log_level: loud
        """)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert list(info.value.problems) == [f"{path}:{problem}" for problem in [
        "1: listen: must be host:port (e.g. 127.0.0.1:12434), got 'nowhere'",
        "2: endpoints: two endpoints are named 'a:11434' (http://a:11434 and http://a:11434);"
        " give them distinct `name`s",
        "4: endpoints[1]: must be an http:// or https:// URL, got 'ftp://b'",
        "5: endpoints[2].url: is required",
        "6: endpoints[2].max_concurrent_connections: must be at least 1, got 0",
        "7: endpoints[2].model_slots.x: must be a number, got 'two'",
        "8: endpoints[3]: must be a URL or a mapping",
        "10: max_queue: must be at least 0, got -1",
        f"11: bogus: unknown key (known keys: {', '.join(sorted(TOP_KEYS))})",
        "13: router_api_keys.ops: must be a non-empty string",
        "14: log_level: must be one of debug, info, warning, error, got 'loud'",
    ]]
    assert str(info.value) == "; ".join(info.value.problems)  # one line for the journal and sd_notify


def test_unset_environment_variable_is_reported_not_sent(tmp_path, monkeypatch):
    monkeypatch.delenv("NOPE_KEY", raising=False)
    path = write(tmp_path, "endpoints:\n  - name: x\n    url: http://a:1\n    api_key: ${NOPE_KEY}\n")
    config = load_config(path)
    assert config.endpoints[0].api_key is None
    assert any("NOPE_KEY is not set" in w for w in config.warnings)


def test_router_keys_from_config_and_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("NOMYO_ROUTER_API_KEY", "from-env")
    path = write(tmp_path, "endpoints: [http://a:1]\nrouter_api_keys: {ci: k1}\n")
    assert dict(load_config(path).router_api_keys) == {"ci": "k1", "default": "from-env"}
    path = write(tmp_path, "endpoints: [http://a:1]\nnomyo-router-api-key: file-key\n")
    assert dict(load_config(path).router_api_keys) == {"default": "file-key"}


@pytest.mark.parametrize(("text", "expected"), [
    ("", "the configuration is empty: list at least one backend URL under `endpoints:`"),
    ("# nothing but a comment\n", "the configuration is empty"),
    ("endpoints: []\n", ":1: endpoints: no backends configured"),
    ("listen: 127.0.0.1:9\nllama_server_endpoints: []\n", "no backends configured"),
])
def test_a_router_without_backends_is_a_configuration_error(tmp_path, text, expected):
    """An empty file or `endpoints: []` once passed and started a router that could answer
    nothing; both are refused with a message that says what to add."""

    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    assert expected in str(info.value)


def test_credentials_in_a_url_become_basic_auth_and_leave_the_url(tmp_path, monkeypatch):
    """`http://user:pw@host` is taken apart once: the URL (and the default name) carry no
    userinfo anywhere, the credentials travel as Basic auth; an api_key wins over them."""

    path = write(tmp_path, """\
        endpoints:
          - http://alice:s%40cret@gpu1:11434/
          - name: vllm
            url: https://bob:hunter2@vllm:8000/v1
            type: openai
            api_key: sk-1
        api_keys:
          "http://alice:s%40cret@gpu1:11434": k
        """)
    gpu1, vllm = load_config(path).endpoints
    assert (gpu1.name, gpu1.url) == ("gpu1:11434", "http://gpu1:11434")
    assert gpu1.basic_auth == "Basic " + base64.b64encode(b"alice:s@cret").decode()
    assert gpu1.api_key == "k" and gpu1.authorization == "Bearer k"
    assert vllm.url == "https://vllm:8000/v1" and vllm.authorization == "Bearer sk-1"
    assert "cret" not in repr(gpu1) and "hunter2" not in repr(vllm)
    bad = write(tmp_path, "endpoints:\n  - ftp://alice:s3cr3t@gpu1\n")
    with pytest.raises(ConfigError) as info:
        load_config(bad)
    assert "s3cr3t" not in str(info.value) and "ftp://***@gpu1" in str(info.value)


def test_front_door_settings(tmp_path):
    path = write(tmp_path, """\
        endpoints: [http://a:1]
        admin_api_keys: {ops: adm1n}
        health_requires_key: false
        allowed_origins: ["https://chat.example.com", "https://*.example.org"]
        allowed_hosts: router.example.com
        client_header_timeout: 10
        client_body_timeout: 20
        keepalive_timeout: 5
        max_connections: 100
        """)
    config = load_config(path)
    assert dict(config.admin_api_keys) == {"ops": "adm1n"} and config.health_requires_key is False
    assert config.allowed_origins == ("https://chat.example.com", "https://*.example.org")
    assert config.allowed_hosts == ("router.example.com",)
    assert (config.client_header_timeout, config.client_body_timeout, config.keepalive_timeout) == (10, 20, 5)
    assert config.max_connections == 100
    with pytest.raises(ConfigError, match=":2: health_requires_key: must be true or false"):
        load_config(write(tmp_path, "endpoints: [http://a:1]\nhealth_requires_key: 'no'\n"))
    with pytest.raises(ConfigError, match=":2: allowed_origins: must be a list of non-empty strings"):
        load_config(write(tmp_path, "endpoints: [http://a:1]\nallowed_origins: [1]\n"))


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read the configuration"):
        load_config(tmp_path / "absent.yaml")


def test_reference_config_is_valid():
    config = load_config("etc/nomyo/config.yaml")
    assert config.endpoints[0].url == "http://127.0.0.1:11434"


@pytest.mark.parametrize(("value", "expected"), [
    ("127.0.0.1:80", ("127.0.0.1", 80)), ("[::1]:12434", ("::1", 12434)), (":9", ("0.0.0.0", 9)),
])
def test_parse_listen(value, expected):
    assert parse_listen(value) == expected


@pytest.mark.parametrize(("name", "expected"), [
    ("llama3", "llama3:latest"), ("Llama3:LATEST", "llama3:latest"), ("ns/model:7b", "ns/model:7b"),
    ("registry:5000/ns/model", "registry:5000/ns/model:latest"),
])
def test_model_names_normalise_like_ollama(name, expected):
    assert normalize_model(name) == expected

"""AMQP_URL naming the nodes of a cluster: its two forms, split into one URL a node, and
what the settings say about a bad one."""

from __future__ import annotations

import pytest

from paylane_common.broker.amqp import broker_urls, host_of
from paylane_common.runtime.exceptions import ConfigError
from paylane_common.runtime.settings import BaseServiceSettings, load_settings


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("amqp://u:p@h1:5672/v", ["amqp://u:p@h1:5672/v"]),
        # Hosts separated by commas in one URL: credentials, vhost and query for each.
        (
            "amqp://u:p@h1:5672,h2:5673,h3/v?heartbeat=30",
            [
                "amqp://u:p@h1:5672/v?heartbeat=30",
                "amqp://u:p@h2:5673/v?heartbeat=30",
                "amqp://u:p@h3/v?heartbeat=30",
            ],
        ),
        ("amqps://u:p@[::1]:5671,h2/", ["amqps://u:p@[::1]:5671/", "amqps://u:p@h2/"]),
        # Whole URLs, separated by commas or whitespace (a file: one a line).
        ("amqp://u:p@h1/v, amqp://u:p@h2/v", ["amqp://u:p@h1/v", "amqp://u:p@h2/v"]),
        ("amqp://u:p@h1/v\namqp://u:p@h2/v\n", ["amqp://u:p@h1/v", "amqp://u:p@h2/v"]),
        # A comma in the password (userinfo may hold one) is not a host separator.
        ("amqp://u:a,b@h1,h2/", ["amqp://u:a,b@h1/", "amqp://u:a,b@h2/"]),
    ],
)
def test_each_node_gets_a_url_of_its_own(url: str, expected: list[str]) -> None:
    assert list(broker_urls(url)) == expected


def test_what_logs_say_about_a_node_is_its_host_and_port_only() -> None:
    assert host_of("amqp://paylane:s3cret@rabbit-1:5673/v") == "rabbit-1:5673"
    assert host_of("amqp://paylane:s3cret@rabbit-1/v") == "rabbit-1:5672"
    assert host_of("amqps://paylane:s3cret@[::1]/v") == "[::1]:5671"


@pytest.fixture
def amqp_url(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("AMQP_URL_FILE", raising=False)

    def load(url: str) -> BaseServiceSettings:
        monkeypatch.setenv("AMQP_URL", url)
        return load_settings(BaseServiceSettings)

    return load


def test_a_cluster_url_is_valid_setting(amqp_url) -> None:
    url = "amqp://paylane:pw@rabbit-0:5672,rabbit-1:5672,rabbit-2:5672/paylane"
    assert amqp_url(url).amqp_url == url


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("amqp://u:p@h1,,h3/", "AMQP_URL host 2 of 3 must look like .*empty host"),
        ("amqp://u:p@h1:5672,h2:99999/", "AMQP_URL host 2 of 2 must look like .*invalid port"),
        ("amqp://u:p@h1/v http://h2/v", "AMQP_URL host 2 of 2 must look like .*scheme"),
        ("amqp://u:p@h1/v junk", "AMQP_URL host 2 of 2 must look like"),
        ("amqp://u:p@h1/a amqp://u:p@h2/b", "AMQP_URL names several vhosts"),
        ("http://broker", r"AMQP_URL must look like amqp://user:password@host:5672/vhost"),
    ],
)
def test_a_bad_host_is_named_without_the_password(amqp_url, url: str, says: str) -> None:
    with pytest.raises(ConfigError, match=says) as refused:
        amqp_url(url)
    assert ":p@" not in str(refused.value)

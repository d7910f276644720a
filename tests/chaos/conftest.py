"""The RabbitMQ cluster of the cluster scenarios: three local nodes for the session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.cluster import RabbitCluster, rabbit_cluster, rabbitmq_scripts
from tests.support.infra import Infra


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitCluster]:
    """Three nodes of the installed RabbitMQ server joined in a cluster, started for the
    module that uses them (test_cluster.py) and removed after it (tests/support/cluster.py):
    kept to the session's end, three idle Erlang VMs took CPU and memory from every test
    after it and their removal was part of the session's teardown."""
    scripts = rabbitmq_scripts()
    if scripts is None:
        pytest.skip("rabbitmq-server is not installed here: no cluster to run")
    with rabbit_cluster(scripts, tmp_path_factory.mktemp("rabbit-cluster")) as started:
        yield started


@pytest.fixture(scope="module")
def cluster_infra(infra: Infra, cluster: RabbitCluster) -> Infra:
    """The session's database with the cluster as the broker (AMQP_URL naming its nodes)."""
    return cluster.infra(infra)

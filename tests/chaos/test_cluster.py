"""Chaos on a broker that is a cluster: three RabbitMQ nodes (tests/chaos/conftest.py),
every service's ``AMQP_URL`` naming all three. While WeChat Pay's notifications flow, the
node leading ``order.payments`` is killed (``kill -9``) and later started again; then the
same for the node ingress is connected to. Afterwards every acknowledged notification has
produced exactly one paid order and exactly one grant, and nothing was dead-lettered.

Before it, on the same cluster: every queue and the stream have a replica on each node,
and a publisher refused by a channel that lost its queue's leader recovers."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator
from typing import Any

import aio_pika
import pytest

from paylane_common.broker import amqp
from paylane_common.broker.publisher import Publisher
from paylane_common.broker.topology import LOG_STREAM, ORDER_PAYMENTS, QUEUES, declare_topology
from paylane_common.runtime.exceptions import PublishError
from tests.chaos.harness.driver import WechatDriver
from tests.chaos.harness.env import ChaosEnv, chaos_env
from tests.chaos.harness.invariants import assert_clean
from tests.chaos.harness.scenario import run_scenario
from tests.support.cluster import Node, RabbitCluster
from tests.support.infra import Infra, unique_name

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(300)]

#: Acknowledgements WeChat must get while a node is down (the stream goes on without it).
ACKS_WHILE_DOWN = 60


@pytest.fixture
async def vhost(cluster_infra: Infra) -> AsyncIterator[str]:
    name = unique_name("paylane_cluster")
    await asyncio.to_thread(cluster_infra.broker.add_vhost, name, cluster_infra.amqp_user)
    yield name
    await asyncio.to_thread(cluster_infra.broker.delete_vhost, name)


def _url(infra: Infra, vhost: str, *nodes: Node) -> str:
    """The cluster's URL naming only ``nodes``."""
    first, *others = nodes
    return dataclasses.replace(
        infra, amqp_port=first.amqp_port, amqp_more_hosts=tuple(n.host for n in others)
    ).amqp_url(vhost)


async def test_every_queue_and_the_stream_have_a_replica_on_each_node(
    cluster: RabbitCluster, cluster_infra: Infra, vhost: str
) -> None:
    connection = await amqp.connect(cluster_infra.amqp_url(vhost), "replicas-test")
    try:
        await declare_topology(await connection.channel())
    finally:
        await connection.close()
    queues = await asyncio.to_thread(cluster.queues, vhost)
    names = {LOG_STREAM}
    for spec in QUEUES:
        names |= {spec.name, spec.dlq, *spec.retry_queues}
    assert set(queues) == names
    everywhere = sorted(node.name for node in cluster.nodes)
    for name, queue in queues.items():
        assert sorted(queue["members"]) == everywhere, (name, queue)


async def test_a_publisher_refused_after_its_leader_died_moves_to_a_new_channel(
    cluster: RabbitCluster, cluster_infra: Infra, vhost: str
) -> None:
    """RabbitMQ 3.10 refuses (nacks), for as long as the channel lives, what a channel
    publishes to a quorum queue when its first publish there came while the queue's
    leader was down: the channel keeps asking the dead leader. The publisher moves to a
    new channel after a nack, which finds the new leader."""
    first, second, third = cluster.nodes
    admin = await amqp.connect(_url(cluster_infra, vhost, first), "admin")
    try:
        await declare_topology(await admin.channel())  # queues led by the declaring node
    finally:
        await admin.close()
    assert await asyncio.to_thread(cluster.leader, vhost, ORDER_PAYMENTS.name) is first
    connection = await amqp.connect(_url(cluster_infra, vhost, second, third), "stuck-test")
    publisher = await Publisher.open(connection, declare=False)
    await asyncio.to_thread(cluster.kill, first)
    refused = 0
    try:
        async with asyncio.timeout(30):
            while True:
                try:
                    message = aio_pika.Message(b"after the leader died", delivery_mode=2)
                    await publisher.publish_to_queue(ORDER_PAYMENTS.name, message)
                    break
                except PublishError as exc:
                    assert "refused" in str(exc), exc
                    refused += 1
                    await asyncio.sleep(0.2)
    finally:
        await publisher.close()
        await connection.close()
        await asyncio.to_thread(cluster.restart, first)
    assert refused >= 1, "the first publish was not refused: the case did not arise"


@pytest.fixture(scope="module")
async def env(
    cluster: RabbitCluster, cluster_infra: Infra, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[ChaosEnv]:
    try:
        async with chaos_env(cluster_infra, tmp_path_factory.mktemp("chaos-cluster-logs")) as env:
            yield env
    finally:
        await asyncio.to_thread(cluster.revive)  # whatever happened, three nodes again


async def test_leader_node_and_ingress_node_killed_mid_stream(
    env: ChaosEnv, cluster: RabbitCluster
) -> None:
    async def outage(driver: WechatDriver, node: Node, after: Any) -> dict[str, str]:
        """Kill ``node``; once WeChat has had more acknowledgements without it, note where
        ``after()`` moved to; then start it again."""
        down = time.monotonic()
        await asyncio.to_thread(cluster.kill, node)
        try:
            await driver.wait_acks(ACKS_WHILE_DOWN, timeout=60)
            moved: Node = await asyncio.to_thread(after)
        finally:
            await asyncio.to_thread(cluster.restart, node)
        assert moved is not node, f"still on the killed {node.name}"
        return {"killed": node.name, "then": moved.name, "down": f"{time.monotonic() - down:.1f}s"}

    def leader() -> Node:
        return cluster.leader(env.vhost, "order.payments")

    def ingress_node() -> Node:
        return cluster.connected_node(env.vhost, "paylane-ingress")

    async def inject(driver: WechatDriver) -> dict[str, Any]:
        notes: dict[str, Any] = {}
        await driver.wait_sent(60)
        notes["leader"] = await outage(driver, await asyncio.to_thread(leader), leader)
        await driver.wait_sent(450, timeout=60)
        notes["ingress"] = await outage(driver, await asyncio.to_thread(ingress_node), ingress_node)
        return notes

    report = await run_scenario(
        env, "cluster: kill -9 the leader's node, then ingress's", inject, orders=900
    )
    # What the services' logs tell: moves to another node, nacked channels given up.
    for event in ("broker_failover", "publisher_channel_renewed"):
        report.notes[event] = {
            name: (env.stack.log_dir / f"{name}.log").read_text().count(f'"event":"{event}"')
            for name in ("ingress", "order", "entitlement", "notifier")
        }
    assert_clean(report)

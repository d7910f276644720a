"""RabbitMQ: the connection, confirmed publishing, the topology, publishers' identities,
ingress-first pressure, queue depths."""

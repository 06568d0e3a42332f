"""Broker plumbing: the embedded brokers, Kafka clients, the admin protocol and topics."""

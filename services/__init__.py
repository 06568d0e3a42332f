"""The Kafka shell around the pure engine: broker, settings, topics, roles and CLI.

Unlike `engine` and `events`, this package talks to Kafka (aiokafka, faust) and
reads the wall clock.
"""

"""Contextual-bandit allocation on Kafka: pure core, thin Faust/Kafka/Postgres shell."""

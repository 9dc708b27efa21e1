"""The pure bandit core: no I/O, no Faust, no Kafka, no SQL."""

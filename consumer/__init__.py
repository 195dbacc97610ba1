"""asapp-metadata-consumer: Kafka (Avro) → ASAPP Metadata Ingestion API.

The package reads as the vocabulary of the domain, one job per module:

- ``settings``: frozen configuration read once from the environment.
- ``errors``: the exception tree, grouped by what the caller does.
- ``records``: value types (entity, position, message, item, batch).
- ``schemas`` / ``decoder``: the only fastavro users.
- ``mapping`` / ``validation``: Avro record → API item, checked against the API's own spec.
- ``batcher``: per-entity micro-batches by count, bytes and linger.
- ``retry``: pure backoff policy, token-bucket rate limiter, shared pod-wide backoff gate.
- ``sink``: the only httpx user: POST a batch, classify the answer.
- ``offsets``: per-partition tracking of finished offsets (the commit invariant).
- ``kafka``: the only confluent_kafka user (consumer, DLQ producer).
- ``pipeline``: the poll loop.
- ``metrics`` / ``health`` / ``logs``: the operator's interface.
- ``cli``: the composition root.

``consumer.sandbox`` holds the local stand-ins (broker launcher, emulated ASAPP API, schema
registry) used by the demo and the tests; the service never imports it.
"""

__version__ = "0.1.0"

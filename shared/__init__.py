"""rlimpact's common library: settings, event schemas, storage, database, Kafka and metrics."""

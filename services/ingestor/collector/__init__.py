"""The Ballchasing collector (client, collect) and the skill-labels import (labels): run by the
CLI (``rlimpact collect``, ``rlimpact labels``), never by the ingestor service, whose
:func:`ingest_file` they feed."""

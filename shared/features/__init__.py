"""Features: the table (table), how it is computed (context; rows, by named blocks, with past
and scales; batch and stream), the replay-borne labels (labels) and its Parquet files (dataset)."""

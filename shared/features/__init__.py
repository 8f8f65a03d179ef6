"""Features: the table (table), how it is computed (context, rows; batch and stream) and its
Parquet files (dataset)."""

"""SQLite persistence: schema and migrations, the single writer, read queries."""

"""SQLite persistence: schema and migrations, the single writer (writer.py, with its batch planner, record
kinds, statements, receipts and outbox budget), read queries."""

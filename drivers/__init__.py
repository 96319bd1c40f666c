"""Everything that speaks a field protocol. Imports gateway.core only."""

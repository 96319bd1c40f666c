"""Control: command executor, desired-state layers, weekly schedules (pure cores; wiring lives in gateway.app)."""

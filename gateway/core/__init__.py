"""Protocol-neutral core: models, ports, errors, clock, metrics. Imports nothing else of ours."""

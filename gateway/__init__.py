"""edge-gateway: the local hub of a building's air purifiers and sensors."""

__version__ = "0.1.0"

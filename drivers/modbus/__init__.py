"""Modbus RTU: register codec, read planner, register maps, bus owner, link and device kinds."""

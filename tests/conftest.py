pytest_plugins = ["tests.fixtures.mosquitto", "tests.fixtures.gateway"]

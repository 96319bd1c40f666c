pytest_plugins = [
    "tests.fixtures.mosquitto",
    "tests.fixtures.gateway",
    "tests.fixtures.cloud",
    "tests.fixtures.backends",
    "tests.fixtures.hang_report",
    "tests.fixtures.leaks",
    "tests.fixtures.modbus",
]

"""Simulated BLE sensors and radio: a bleak backend (scanner and GATT client) plugged in through bleak's public
`backend=` argument, with BTHome (plain and encrypted), Ruuvi and ATC sensors and a GATT peripheral."""

"""Store-and-forward to the cloud broker (CONTRACT section 2)."""

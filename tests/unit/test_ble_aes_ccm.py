"""drivers/ble/aes_ccm.py (OpenSSL's AES-CCM through ctypes) against `cryptography`'s AESCCM, the reference."""

from __future__ import annotations

import subprocess
import sys

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESCCM
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.ble.aes_ccm import AesCcm, InvalidTag

KEYS = st.binary(min_size=16, max_size=16)
NONCES = st.integers(7, 13).flatmap(lambda n: st.binary(min_size=n, max_size=n))
AADS = st.one_of(st.none(), st.binary(min_size=1, max_size=20))


@settings(max_examples=300, deadline=None)
@given(key=KEYS, nonce=NONCES, plain=st.binary(max_size=40), aad=AADS, flip=st.integers(0, 10_000),
       mic_in_init=st.booleans())
def test_it_agrees_with_cryptography_and_refuses_any_flipped_bit(key: bytes, nonce: bytes, plain: bytes,
                                                                  aad: bytes | None, flip: int,
                                                                  mic_in_init: bool) -> None:
    """Both ways of giving OpenSSL the MIC: with the nonce (OpenSSL 3), and by a call of its own (1.1)."""
    sealed = AESCCM(key, tag_length=4).encrypt(nonce, plain, aad)
    ours = AesCcm(key, mic_in_init=mic_in_init)
    assert ours.encrypt(nonce, plain, aad) == (sealed[:-4], sealed[-4:])
    assert ours.decrypt(nonce, sealed[:-4], sealed[-4:], aad) == plain
    forged = bytearray(sealed)
    forged[flip % len(forged)] ^= 1 << (flip % 8)
    with pytest.raises(InvalidTag):
        ours.decrypt(nonce, bytes(forged[:-4]), bytes(forged[-4:]), aad)
    assert ours.decrypt(nonce, sealed[:-4], sealed[-4:], aad) == plain  # usable again after a refusal
    assert ours.encrypt(nonce, plain, aad) == (sealed[:-4], sealed[-4:])  # and in the other direction


def test_one_cipher_takes_nonces_of_either_format_in_turn() -> None:
    key = bytes(range(16))
    reference = AESCCM(key, tag_length=4)
    ours = AesCcm(key)
    for nonce, aad in ((bytes(13), None), (bytes(11), b"\x11"), (bytes(range(13)), None)):
        sealed = reference.encrypt(nonce, b"\x02\xc4\x09", aad)
        assert ours.decrypt(nonce, sealed[:-4], sealed[-4:], aad) == b"\x02\xc4\x09"


@pytest.mark.parametrize(("key", "nonce", "ciphertext", "mic"), [
    (bytes(15), bytes(13), bytes(8), bytes(4)),  # AES-128 only
    (bytes(16), bytes(6), bytes(8), bytes(4)),  # nonce shorter than CCM allows
    (bytes(16), bytes(14), bytes(8), bytes(4)),
    (bytes(16), bytes(13), bytes(8), bytes(3)),  # a MIC of 4 bytes only
    (bytes(16), bytes(13), bytes(256), bytes(4)),  # longer than an advertisement
])
def test_impossible_arguments_are_refused_before_openssl_sees_them(key: bytes, nonce: bytes, ciphertext: bytes,
                                                                   mic: bytes) -> None:
    with pytest.raises(ValueError):
        AesCcm(key).decrypt(nonce, ciphertext, mic)


def test_decrypting_adverts_loads_no_crypto_package() -> None:
    """The gateway's decoders decrypt with the libcrypto already in the process: `cryptography` (6-7 MB of RSS)
    stays unloaded."""
    code = (
        "import sys\n"
        "from drivers.ble.hub_adverts import BleAdvertDecoder\n"
        "from firmware_sim.ble.sensors import SimulatedBleSensor\n"
        "from tests.bench.bench_ble import KEY, MAC, Device\n"
        "adverts = [SimulatedBleSensor(MAC, 'bthome', bindkey=KEY, seed=1).advert().raw]\n"
        "for name in [m for m in sys.modules if m.split('.')[0] == 'cryptography']:\n"
        "    del sys.modules[name]  # the simulator encrypts with it; the decoder must not need it\n"
        "sys.modules['cryptography'] = None  # importing it now fails\n"
        "decoder = BleAdvertDecoder([Device('D', MAC, 'bthome', KEY.hex())])\n"
        "reading = decoder.decode_raw(MAC, adverts[0], 1.0e9)\n"
        "assert reading is not None and reading.metrics['encryption_counter'] >= 0, reading\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "ok", out.stderr


def test_without_libcrypto_the_cryptography_package_decrypts_the_same(monkeypatch: pytest.MonkeyPatch) -> None:
    """A Python without a findable libcrypto (a static build): make_cipher falls back to `cryptography`."""
    from drivers.ble import aes_ccm, formats

    key, nonce, plain = bytes(range(16)), bytes(range(13)), b"\x02\xca\x09"
    ciphertext, mic = aes_ccm.AesCcm(key).encrypt(nonce, plain)

    def no_libcrypto() -> None:
        raise ImportError("no libcrypto here")

    monkeypatch.setattr(aes_ccm, "_libcrypto", no_libcrypto)
    cipher = formats.make_cipher(key)
    assert isinstance(cipher, aes_ccm.CryptographyCcm)
    assert cipher.decrypt(nonce, ciphertext, mic) == plain
    with pytest.raises(aes_ccm.InvalidTag):
        cipher.decrypt(nonce, ciphertext, bytes(4))

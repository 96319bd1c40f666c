"""AES-128-CCM (NIST SP 800-38C) through the OpenSSL libcrypto the interpreter already has loaded (ctypes). No I/O.

Encrypted BTHome and pvvx adverts need AES-CCM with a 13- or 11-byte nonce and a 4-byte MIC. Python's `ssl` and
`hashlib` modules are linked against libcrypto, so its AES-CCM is in the gateway's process anyway; calling it
through ctypes (also loaded by the gateway already) cost the daemon 0.2 MB of RSS with 15 devices with a bindkey,
where importing `cryptography` cost it 6.6 MB (its own statically linked OpenSSL; tests/bench/bench_ble.py). The
functions used (EVP_CIPHER_CTX_*, EVP_aes_128_ccm, EVP_{De,En}cryptInit_ex/Update) are the same in OpenSSL 1.1
and 3.x; EVP_DecryptInit_ex2 (3.0) is used where present.

`AesCcm(key)` holds one cipher context with the key schedule set once (again only when the direction or the
nonce length changes, or after a MIC mismatch); each decryption sets only the nonce and MIC (one call with
OpenSSL 3, two with 1.1) and decrypts (one call, three with associated data): no key expansion per advert.
Not thread-safe (one per device, used on the event loop).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from typing import Any

MIC_LENGTH = 4
NONCE_LENGTHS = range(7, 14)  # CCM's: BTHome's nonce has 13 bytes, pvvx's 11
MAX_MESSAGE = 255  # a BLE advertisement's AD structure is shorter

_CTRL_AEAD_SET_IVLEN = 0x9
_CTRL_AEAD_GET_TAG = 0x10
_CTRL_AEAD_SET_TAG = 0x11
_OSSL_PARAM_OCTET_STRING = 5
_OSSL_PARAM_UNMODIFIED = ctypes.c_size_t(-1).value  # SIZE_MAX on this platform (32-bit ARM gateways too)


class _OsslParam(ctypes.Structure):
    """OpenSSL 3's OSSL_PARAM: how EVP_DecryptInit_ex2 takes the MIC in the same call as the nonce."""

    _fields_ = (("key", ctypes.c_char_p), ("data_type", ctypes.c_uint), ("data", ctypes.c_void_p),
                ("data_size", ctypes.c_size_t), ("return_size", ctypes.c_size_t))


class InvalidTag(Exception):  # the name AES-CCM libraries give it
    """The MIC does not match: a wrong key, or a forged or corrupted message."""


@functools.cache
def _libcrypto() -> Any:
    """The libcrypto that `_hashlib` (hashlib's OpenSSL backend) is linked against, else the system's."""
    names: list[str] = []
    try:
        import _hashlib

        names.append(_hashlib.__file__)  # dlsym on its handle finds the symbols of its libcrypto
    except (ImportError, AttributeError):
        pass
    found = ctypes.util.find_library("crypto")
    if found:
        names.append(found)
    for name in names:
        try:
            lib = ctypes.PyDLL(name)  # short calls: keeping the GIL is cheaper than releasing it
            lib.EVP_aes_128_ccm  # noqa: B018  present?
        except (OSError, AttributeError):
            continue
        return _declare(lib)
    raise ImportError("AES-CCM needs OpenSSL's libcrypto (1.1 or 3.x); none was found")


def _declare(lib: Any) -> Any:
    """Types of the set-up functions (pointers returned). The per-message ones (ctrl, Init, Update) stay
    undeclared: their arguments are a c_void_p context, small ints, bytes, None and ctypes buffers, which ctypes
    passes as they are, without the conversion cost of argtypes (about half of a decryption's time)."""
    lib.EVP_CIPHER_CTX_new.restype = ctypes.c_void_p
    lib.EVP_CIPHER_CTX_new.argtypes = []
    lib.EVP_CIPHER_CTX_free.restype = None
    lib.EVP_CIPHER_CTX_free.argtypes = [ctypes.c_void_p]
    lib.EVP_aes_128_ccm.restype = ctypes.c_void_p
    lib.EVP_aes_128_ccm.argtypes = []
    return lib


class AesCcm:
    """AES-128-CCM with a 7..13-byte nonce and a 4-byte MIC, the key set once."""

    __slots__ = ("_ctx", "_decrypt_init", "_decrypt_init_with_mic", "_decrypt_update", "_encrypt", "_key", "_lib",
                 "_mic", "_mic_params", "_nonce_length", "_out", "_out_length", "_set_tag")

    def __init__(self, key: bytes, *, mic_in_init: bool = True) -> None:
        """`mic_in_init`: with OpenSSL 3, give the MIC and the nonce in one call (EVP_DecryptInit_ex2); without
        it, or where libcrypto is 1.1, the MIC is set by a call of its own."""
        if len(key) != 16:
            raise ValueError(f"AES-128-CCM takes a 16-byte key, not {len(key)} bytes")
        lib = _libcrypto()
        self._lib = lib
        self._key = key
        ctx = lib.EVP_CIPHER_CTX_new()
        if not ctx:
            raise MemoryError("EVP_CIPHER_CTX_new failed")
        self._ctx = ctypes.c_void_p(ctx)
        self._encrypt = False
        self._nonce_length = 13
        self._out = ctypes.create_string_buffer(MAX_MESSAGE)
        self._out_length = ctypes.byref(ctypes.c_int())
        self._decrypt_init = lib.EVP_DecryptInit_ex
        self._decrypt_update = lib.EVP_DecryptUpdate
        self._set_tag = lib.EVP_CIPHER_CTX_ctrl
        self._decrypt_init_with_mic = getattr(lib, "EVP_DecryptInit_ex2", None) if mic_in_init else None
        self._mic = ctypes.create_string_buffer(MIC_LENGTH)
        self._mic_params = (_OsslParam * 2)(  # the MIC, then the terminating empty entry
            _OsslParam(b"tag", _OSSL_PARAM_OCTET_STRING, ctypes.addressof(self._mic), MIC_LENGTH,
                       _OSSL_PARAM_UNMODIFIED))
        self._setup(encrypt=False, nonce_length=13)

    def __del__(self) -> None:
        ctx = getattr(self, "_ctx", None)
        if ctx is not None:
            self._lib.EVP_CIPHER_CTX_free(ctx)

    def _setup(self, *, encrypt: bool, nonce_length: int) -> None:
        if nonce_length not in NONCE_LENGTHS:
            raise ValueError(f"AES-CCM nonce of {nonce_length} bytes (7..13)")
        lib, ctx = self._lib, self._ctx
        init = lib.EVP_EncryptInit_ex if encrypt else lib.EVP_DecryptInit_ex
        if (init(ctx, ctypes.c_void_p(lib.EVP_aes_128_ccm()), None, None, None) != 1
                or lib.EVP_CIPHER_CTX_ctrl(ctx, _CTRL_AEAD_SET_IVLEN, nonce_length, None) != 1
                or lib.EVP_CIPHER_CTX_ctrl(ctx, _CTRL_AEAD_SET_TAG, MIC_LENGTH, None) != 1
                or init(ctx, None, None, self._key, None) != 1):
            raise RuntimeError("OpenSSL refused the AES-CCM set-up")
        self._encrypt = encrypt
        self._nonce_length = nonce_length

    def decrypt(self, nonce: bytes, ciphertext: bytes, mic: bytes, aad: bytes | None = None) -> bytes:
        """The ciphertext and its MIC -> the plaintext; InvalidTag when the MIC does not match. (The MIC apart:
        encrypted adverts carry a counter between the two, so joining them would cost a copy.)"""
        size = len(ciphertext)
        if size > MAX_MESSAGE or len(mic) != MIC_LENGTH:
            raise ValueError(f"AES-CCM: {size} bytes of ciphertext (at most {MAX_MESSAGE}), a {len(mic)}-byte MIC "
                             f"({MIC_LENGTH})")
        if self._encrypt or len(nonce) != self._nonce_length:
            self._setup(encrypt=False, nonce_length=len(nonce))
        ctx, out, out_length, update = self._ctx, self._out, self._out_length, self._decrypt_update
        init_with_mic = self._decrypt_init_with_mic
        if init_with_mic is not None:
            self._mic.raw = mic
            if init_with_mic(ctx, None, None, nonce, self._mic_params) != 1:
                raise RuntimeError("OpenSSL refused the AES-CCM nonce or MIC")
        elif (self._set_tag(ctx, _CTRL_AEAD_SET_TAG, MIC_LENGTH, mic) != 1
                or self._decrypt_init(ctx, None, None, None, nonce) != 1):
            raise RuntimeError("OpenSSL refused the AES-CCM nonce or MIC")
        if aad and (update(ctx, None, out_length, None, size) != 1
                    or update(ctx, None, out_length, aad, len(aad)) != 1):
            raise RuntimeError("OpenSSL refused the AES-CCM associated data")
        if update(ctx, out, out_length, ciphertext, size) != 1:
            # OpenSSL leaves the context unusable after a MIC mismatch: set it up again
            self._setup(encrypt=False, nonce_length=self._nonce_length)
            raise InvalidTag
        return out.raw[:size]

    def encrypt(self, nonce: bytes, data: bytes, aad: bytes | None = None) -> tuple[bytes, bytes]:
        """The plaintext -> (ciphertext, MIC)."""
        if len(data) > MAX_MESSAGE - MIC_LENGTH:
            raise ValueError(f"AES-CCM: {len(data)} bytes of plaintext (at most {MAX_MESSAGE - MIC_LENGTH})")
        if not self._encrypt or len(nonce) != self._nonce_length:
            self._setup(encrypt=True, nonce_length=len(nonce))
        lib, ctx, out, out_length = self._lib, self._ctx, self._out, self._out_length
        size = len(data)
        if lib.EVP_EncryptInit_ex(ctx, None, None, None, nonce) != 1 \
                or lib.EVP_EncryptUpdate(ctx, None, out_length, None, size) != 1 \
                or (aad and lib.EVP_EncryptUpdate(ctx, None, out_length, aad, len(aad)) != 1) \
                or lib.EVP_EncryptUpdate(ctx, out, out_length, data, size) != 1:
            raise RuntimeError("OpenSSL refused the AES-CCM encryption")
        ciphertext = out.raw[:size]
        if lib.EVP_EncryptFinal_ex(ctx, out, out_length) != 1 \
                or lib.EVP_CIPHER_CTX_ctrl(ctx, _CTRL_AEAD_GET_TAG, MIC_LENGTH, out) != 1:
            raise RuntimeError("OpenSSL refused the AES-CCM tag")
        return ciphertext, out.raw[:MIC_LENGTH]


class CryptographyCcm:
    """The same decryption with the `cryptography` package's AESCCM: where no libcrypto can be found (a static
    Python build), at the import cost the ctypes path avoids."""

    __slots__ = ("_ciphers", "_key")

    def __init__(self, key: bytes) -> None:
        if len(key) != 16:
            raise ValueError(f"an AES-128 key has 16 bytes, not {len(key)}")
        self._key = key
        self._ciphers: dict[int, Any] = {}

    def decrypt(self, nonce: bytes, ciphertext: bytes, mic: bytes, aad: bytes | None = None) -> bytes:
        from cryptography.exceptions import InvalidTag as LibraryInvalidTag
        from cryptography.hazmat.primitives.ciphers.aead import AESCCM

        cipher = self._ciphers.get(len(mic))
        if cipher is None:
            cipher = self._ciphers[len(mic)] = AESCCM(self._key, tag_length=len(mic))
        try:
            return bytes(cipher.decrypt(nonce, ciphertext + mic, aad))
        except LibraryInvalidTag:
            raise InvalidTag("MIC mismatch") from None

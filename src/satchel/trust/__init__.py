"""Trust: signing and verifying SIF images, the user's keyrings, the admin's execution control list.

The formats are those of the reference SIF implementation (sylabs/sif v2 `pkg/integrity`):

- metadata.py  the image metadata a signature covers (header, descriptor and object digests)
- pgp.py       OpenPGP: keys and clear-signing through Sequoia (pysequoia), verification
               through GnuPG's gpgv (see the module docstring for why)
- dsse.py      DSSE envelopes signed with PEM keys (ECDSA, Ed25519, RSA) through `cryptography`
- sign.py      adding signature objects to an image, all or nothing
- verify.py    checking them: which objects each signature covers, which key made it
- keyring.py   Apptainer's keyring layout (~/.apptainer/keys/pgp-public, pgp-secret)
- ecl.py       ecl.toml, the admin's execution control list, checked before a launch

Nothing here is imported by the exec path unless an activated ECL asks for it.
"""

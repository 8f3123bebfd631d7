#!/usr/bin/python3
"""Signing and verifying a large SIF against the hashing floor: `sha256sum` of the same file.

    /usr/bin/python3 bench/sign_bench.py [--size-mib 1024] [--runs 5] [--dir /tmp]

Builds a SIF holding one partition of --size-mib MiB of random bytes (so the data is really
read and hashed), then measures, interleaved round-robin after one warm-up round (the page
cache holds the file: this is CPU, not disk):
  sha256sum IMG                         the floor: one pass of SHA-256 over every byte
  openssl dgst -sha256 IMG              the same with OpenSSL's SHA-NI code, which hashlib
                                        uses too (coreutils' own SHA-256 is ~5x slower here)
  satchel sign --key ed25519.pem IMG    DSSE (PEM key); the signature is deleted after each run
  satchel sign IMG                      PGP (a new unprotected key in a throwaway keyring)
  satchel verify --key ed25519.pub IMG  DSSE
  satchel verify IMG                    PGP, through gpgv
and prints the medians and each one's ratio to sha256sum (goal: at most 1.3x). Each timing is a
whole process (interpreter start, imports, hashing, signing, writing).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SATCHEL = os.path.join(ROOT, ".venv", "bin", "satchel")
sys.path.insert(0, os.path.join(ROOT, "src"))


def make_image(path: str, size: int) -> None:
    from satchel.image import sif
    data = path + ".part"
    with open(data, "wb") as fh:
        left = size
        while left:
            chunk = os.urandom(min(left, 64 << 20))
            fh.write(chunk)
            left -= len(chunk)
    sif.create(path, [sif.NewObject(datatype=sif.DATA_PARTITION, path=data, group_id=1,
                                    fs_type=sif.FS_RAW, part_type=sif.PART_PRIMSYS)])
    os.unlink(data)


def make_keys(directory: str, env: dict) -> tuple[str, str]:
    from cryptography.hazmat.primitives import serialization as s
    from cryptography.hazmat.primitives.asymmetric import ed25519
    key = ed25519.Ed25519PrivateKey.generate()
    private, public = os.path.join(directory, "ed.pem"), os.path.join(directory, "ed.pub")
    with open(private, "wb") as fh:
        fh.write(key.private_bytes(s.Encoding.PEM, s.PrivateFormat.PKCS8, s.NoEncryption()))
    with open(public, "wb") as fh:
        fh.write(key.public_key().public_bytes(s.Encoding.PEM,
                                               s.PublicFormat.SubjectPublicKeyInfo))
    subprocess.run([SATCHEL, "-q", "key", "newpair", "-N", "Bench", "-E", "bench@example.org"],
                   env=env, check=True)
    return private, public


def timed(argv: list[str], env: dict) -> float:
    start = time.perf_counter()
    subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def unsign(path: str) -> None:
    from satchel.image import sif
    with sif.SIFFile.open(path) as f:
        ids = [d.id for d in f.descriptors if d.datatype == sif.DATA_SIGNATURE]
    for ident in ids:
        sif.delete_object(path, ident)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--dir", default="/tmp")
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="satchel-signbench-", dir=args.dir)
    env = dict(os.environ, APPTAINER_KEYSDIR=os.path.join(work, "keys"))
    try:
        image = os.path.join(work, "big.sif")
        make_image(image, args.size_mib << 20)
        private, public = make_keys(work, env)
        signed_dsse, signed_pgp = image + ".dsse", image + ".pgp"
        shutil.copyfile(image, signed_dsse)
        subprocess.run([SATCHEL, "-q", "sign", "--key", private, signed_dsse], env=env,
                       check=True)
        shutil.copyfile(image, signed_pgp)
        subprocess.run([SATCHEL, "-q", "sign", signed_pgp], env=env, check=True)
        cases = {
            "sha256sum": ([shutil.which("sha256sum"), image], None),
            "openssl sha256": ([shutil.which("openssl") or "openssl", "dgst", "-sha256", image],
                               None),
            "sign (DSSE)": ([SATCHEL, "-q", "sign", "--key", private, image], unsign),
            "sign (PGP)": ([SATCHEL, "-q", "sign", image], unsign),
            "verify (DSSE)": ([SATCHEL, "-q", "verify", "--key", public, signed_dsse], None),
            "verify (PGP)": ([SATCHEL, "-q", "verify", signed_pgp], None),
        }
        samples: dict[str, list[float]] = {name: [] for name in cases}
        for round_ in range(args.runs + 1):
            for name, (argv, after) in cases.items():
                elapsed = timed(argv, env)
                if after:
                    after(image)
                if round_:  # round 0 warms the page cache and the interpreter's files
                    samples[name].append(elapsed)
        floor = statistics.median(samples["sha256sum"])
        fast = statistics.median(samples["openssl sha256"])
        print(f"{args.size_mib} MiB SIF, {args.runs} runs, medians; ratio to sha256sum (goal "
              f"<= 1.3x) and to openssl's SHA-256 (SHA-NI, as Python's hashlib):")
        for name, values in samples.items():
            med = statistics.median(values)
            print(f"  {name:<15} {med * 1000:8.0f} ms   {med / floor:5.2f}x   {med / fast:5.2f}x")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

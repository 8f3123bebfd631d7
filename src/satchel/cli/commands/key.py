"""satchel key: the OpenPGP keyrings (Apptainer's `key` grammar and file layout).

newpair | list | import | export | remove over ~/.apptainer/keys/pgp-public and pgp-secret
($APPTAINER_KEYSDIR): the files apptainer and singularity use, so keys move freely between them.
There is no keyserver: search, push and pull say so. Wiring only: satchel.trust.keyring.
"""

from __future__ import annotations

import os
import sys

from satchel.cli import options as o
from satchel.errors import TrustError, UsageError

NO_KEYSERVER = "there is no keyserver in satchel (no network): keys live in the local keyrings"

_SUBCOMMANDS = """Available Commands:
  export      Export a public or private key into a specific file
  import      Import a local key into the local or system keyring
  list        List keys in your local or in the global keyring
  newpair     Create a new key pair
  pull        (no keyserver) Fetch an OpenPGP public key from a key server
  push        (no keyserver) Upload an OpenPGP public key to a key server
  remove      Remove a local public key from your local or the global keyring
  search      (no keyserver) Search for keys on a key server
"""

SPECS = {
    "key": o.Spec("key", "key <command> [args...]", "Manage OpenPGP keys",
                  description="Manage your trusted, public and private keys in your local keyring "
                              "(default ~/.apptainer/keys, or $APPTAINER_KEYSDIR).\n\n"
                              + _SUBCOMMANDS.rstrip(),
                  interspersed=False,
                  examples="  satchel key list\n  satchel key import public.asc"),
}

_SECRET = o.Opt("-s --secret", "secret", help="operate on the private (secret) keyring")
_KEYSDIR = o.Opt("-d --keysdir", "keysdir", o.VALUE,
                 help="the local keys directory (instead of $APPTAINER_KEYSDIR or ~/.apptainer/keys)")
_GLOBAL = o.Opt("-g --global", "global_",
                help="the global public keyring beside satchel.conf (admins)")
_WHERE = (_GLOBAL, _KEYSDIR)
_SUBS = {
    "newpair": o.Spec("key", "key newpair [newpair options...]", "Create a new key pair",
                      options=(o.Opt("-N --name", "name", o.VALUE, help="key owner name"),
                               o.Opt("-E --email", "email", o.VALUE, help="key owner email"),
                               o.Opt("-C --comment", "comment", o.VALUE, help="key comment"),
                               o.Opt("-P --password", "password", o.VALUE,
                                     help="passphrase protecting the private key"),
                               o.Opt("-b --bit-length", "bits", o.VALUE, hidden=True),
                               o.Opt("-U --push", "push", hidden=True), _KEYSDIR),
                      max_args=0),
    "list": o.Spec("key", "key list [-s]", "List keys in your local keyring",
                   options=(_SECRET,) + _WHERE, max_args=0),
    "import": o.Spec("key", "key import [-s] <input-key>", "Import a local key",
                     options=(_SECRET, o.Opt("--new-password", "new_password", hidden=True))
                     + _WHERE,
                     min_args=1, max_args=1),
    "export": o.Spec("key", "key export [-s] [-a] [-k N] <output-file>",
                     "Export a public or private key into a specific file",
                     options=(_SECRET, o.Opt("-a --armor", "armor", help="ascii armored format"),
                              o.Opt("-k --keyidx", "keyidx", o.VALUE, metavar="int",
                                    help="which key (index from 'key list')")) + _WHERE,
                     min_args=1, max_args=1),
    "remove": o.Spec("key", "key remove [-s|-p|-b] <fingerprint>", "Remove a local key",
                     options=(_SECRET, o.Opt("-p --public", "public",
                                             help="remove the public key (the default)"),
                              o.Opt("-b --both", "both",
                                    help="remove the public and the private key")) + _WHERE,
                     min_args=1, max_args=1),
    "search": o.Spec("key", "key search <query>", "Search for keys on a key server",
                     options=(o.Opt("-u --url", "url", o.VALUE),
                              o.Opt("-l --long-list", "long_list")), min_args=0),
    "push": o.Spec("key", "key push <fingerprint>", "Upload a public key to a key server",
                   options=(o.Opt("-u --url", "url", o.VALUE),) + _WHERE, min_args=0),
    "pull": o.Spec("key", "key pull <fingerprint>", "Fetch a public key from a key server",
                   options=(o.Opt("-u --url", "url", o.VALUE),) + _WHERE, min_args=0),
}


def run(name: str, parsed) -> int:
    prog = getattr(parsed, "prog", "satchel")
    if not parsed.args:
        sys.stdout.write(o.format_help(SPECS["key"], prog))
        return 0
    sub, rest = parsed.args[0], parsed.args[1:]
    if sub not in _SUBS:
        raise UsageError(f"unknown command {sub!r} for '{prog} key'",
                         hint=f"run '{prog} key --help' for the list of commands")
    spec = _SUBS[sub]
    if any(arg in ("-h", "--help") for arg in rest if arg != "--"):
        sys.stdout.write(o.format_help(spec, prog))
        return 0
    args = o.parse(spec, rest, environ_defaults=False)
    if getattr(args, "keysdir", None):  # Apptainer's --keysdir: the same as $APPTAINER_KEYSDIR
        os.environ["APPTAINER_KEYSDIR"] = args.keysdir
    if getattr(args, "global_", False) and getattr(args, "secret", False):
        raise UsageError("--global: the global keyring holds public keys only (drop --secret)")
    if sub in ("search", "push", "pull"):
        raise TrustError(f"cannot {sub} keys: {NO_KEYSERVER}",
                         hint="move keys with 'satchel key export' and 'satchel key import'")
    return globals()[f"_{sub}"](args)


def _paths(secret: bool, global_: bool = False) -> str:
    from satchel.trust import keyring
    if global_:
        return keyring.global_path()
    return keyring.secret_path() if secret else keyring.public_path()


def _list(args) -> int:
    from satchel.trust import keyring
    path = _paths(args.secret, args.global_)
    keys = keyring.load(path)
    kind = "Private" if args.secret else "Public"
    out = [f"{kind} key listing ({path}):\n\n"]
    for i, key in enumerate(keys):
        out.append(f"{i}) U: {key.name}\n")
        for extra in key.user_ids[1:]:
            out.append(f"   U: {extra}\n")
        out.append(f"   F: {key.fingerprint}\n   --------\n")
    sys.stdout.write("".join(out))
    return 0


def _import(args) -> int:
    from satchel import log
    from satchel.trust import keyring, pgp
    keys = pgp.read_keys(args.args[0])
    secret = [k for k in keys if k.secret]
    if args.secret and not secret:
        raise TrustError(f"{args.args[0]} holds no private key (drop --secret to import public "
                         f"keys)")
    if args.global_:  # the admin's keyring of public keys
        keyring.merge_into(keyring.global_path(), [k.public() for k in keys])
        for key in keys:
            log.info(f"Key with fingerprint {key.fingerprint} added to the global keyring")
        return 0
    if secret:
        keyring.merge_into(keyring.secret_path(), secret)
    keyring.merge_into(keyring.public_path(), [k.public() for k in keys])
    for key in keys:
        log.info(f"Key with fingerprint {key.fingerprint} successfully added to the "
                 f"{'private and public keyrings' if key.secret else 'public keyring'}")
    return 0


def _select(keys, keyidx: str | None, path: str):
    if not keys:
        raise TrustError(f"no key in {path}")
    if keyidx is None:
        if len(keys) == 1:
            return keys[0]
        raise TrustError(f"{len(keys)} keys in {path}: choose one with --keyidx",
                         hint="'satchel key list' shows their indexes")
    if not keyidx.isascii() or not keyidx.isdigit() or int(keyidx) >= len(keys):
        raise UsageError(f"invalid --keyidx {keyidx!r}: indexes 0 to {len(keys) - 1}")
    return keys[int(keyidx)]


def _export(args) -> int:
    from satchel import log
    from satchel.trust import keyring
    path = _paths(args.secret, args.global_)
    key = _select(keyring.load(path), args.keyidx, path)
    data = key.armored().encode() if args.armor else key.binary()
    out = args.args[0]
    try:
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                     0o600 if args.secret else 0o644)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
    except FileExistsError:
        raise TrustError(f"cannot export to {out}: file already exists") from None
    except OSError as err:
        raise TrustError(f"writing {out}: {(err.strerror or str(err)).lower()}") from None
    log.info(f"{'Private' if args.secret else 'Public'} key with fingerprint "
             f"{key.fingerprint} correctly exported to file: {out}")
    return 0


def _remove(args) -> int:
    from satchel import log
    from satchel.trust import keyring
    fpr = args.args[0].replace(" ", "").upper()
    if len(fpr) != 40 or any(c not in "0123456789ABCDEF" for c in fpr):
        raise UsageError(f"invalid fingerprint {args.args[0]!r}: expected 40 hex digits")
    paths = ([_paths(False), _paths(True)] if args.both
             else [_paths(args.secret, args.global_)])
    removed = [path for path in paths if keyring.remove(path, fpr)]
    if not removed:
        raise TrustError(f"no key with fingerprint {fpr} in {' or '.join(paths)}")
    for path in removed:
        log.info(f"Key with fingerprint {fpr} removed from {path}")
    return 0


def _newpair(args) -> int:
    from satchel import log
    from satchel.trust import keyring, pgp
    if args.push:
        raise TrustError(f"cannot push the new key: {NO_KEYSERVER}")
    name = args.name or _ask("Enter your name (e.g. John Doe) : ")
    email = args.email if args.email is not None else _ask("Enter your email address : ", "")
    comment = args.comment if args.comment is not None else ""
    if not name:
        raise UsageError("a key needs a name: give --name")
    user_id = name + (f" ({comment})" if comment else "") + (f" <{email}>" if email else "")
    if args.password:
        key = pgp.generate_protected(user_id, args.password)
    else:
        key = pgp.generate(user_id)
    keyring.merge_into(keyring.secret_path(), [key])
    keyring.merge_into(keyring.public_path(), [key.public()])
    log.info(f"Key created: {key.fingerprint} ({user_id})")
    return 0


def _ask(prompt: str, default: str | None = None) -> str:
    if not sys.stdin.isatty():
        if default is not None:
            return default
        raise UsageError("no terminal to ask for the key owner's name: give --name")
    return input(prompt).strip()

"""/etc/passwd and /etc/group for the container: the image's entries plus the caller.

Programs look the caller up by uid (`id`, `whoami`, ssh, Python's getpass); without an entry
they print "I have no name!" or fail. Apptainer's rules: the image's file is kept, any line for
the caller's name or uid is replaced by the caller's host entry (with the container home);
each of the caller's groups gains the caller as a member, or is appended if the image lacks it.
Pure text in, text out (executor.py reads the image file and writes the result).
"""

from __future__ import annotations


def merge_passwd(image_text: str, entry: str, uid: int, name: str) -> str:
    lines = []
    for line in image_text.splitlines():
        fields = line.split(":")
        if len(fields) >= 3 and (fields[0] == name or fields[2] == str(uid)):
            continue
        lines.append(line)
    lines.append(entry)
    return "\n".join(lines) + "\n"


def merge_group(image_text: str, groups, user: str) -> str:
    """groups: ((gid, name), ...) of the caller, primary first."""
    wanted = {str(gid): name for gid, name in groups}
    lines = []
    seen = set()
    for line in image_text.splitlines():
        fields = line.split(":")
        if len(fields) >= 4 and fields[2] in wanted and fields[2] not in seen:
            seen.add(fields[2])
            members = [m for m in fields[3].split(",") if m]
            if user not in members:
                members.append(user)
            fields[3] = ",".join(members)
            line = ":".join(fields)
        lines.append(line)
    for gid, name in groups:
        if str(gid) not in seen:
            seen.add(str(gid))
            lines.append(f"{name}:x:{gid}:{user}")
    return "\n".join(lines) + "\n"

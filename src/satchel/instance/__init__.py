"""Instances: named containers running in the background, with no daemon.

An instance is its own process tree: `instance start` forks a process that builds the
container (the runtime's plan, applied) and then stays as the container's init
(satchel.instance.init). What satchel remembers about it is one JSON record per instance under
the owner's home (satchel.instance.state); `exec instance://NAME` joins the namespaces of the
recorded process (/proc/PID/ns/*), `instance stop` signals it (satchel.instance.lifecycle).

    state.py      where records and logs live (opened by dir fd, never through a symlink),
                  names, whose process a record names (pidfd + user namespace owner),
                  listing with stale cleanup
    init.py       the instance's first process in the container: runs the start payload,
                  reaps every orphan (child subreaper), stops on a signal
    lifecycle.py  start (fork, detach, wait until the container is up, record it, then
                  release the init) and stop (verify, signal, wait, kill what of the owner
                  is left in the instance's mount namespace)
"""

# SPDX-License-Identifier: Apache-2.0
# synbackup's nexus replay (src/pitr/replay.rs runs it with the service's own
# Python, as the owner of the restored directory):
#   python - DIR FROM TO < RECORDS
# Opens the restored Cortex in DIR and applies the archived nexus entries
# [offset, received_us, entry] read from stdin, offsets FROM..TO-1, exactly the way
# a mirror applies its upstream's (synapse/lib/nexus.py runMirrorLoop): each entry
# must have the offset the local log gives next, and goes through
# `nexsroot.eat(*entry)`, which writes it to the local nexus log at that offset and
# runs the same handler the leader ran; an exception in a handler is logged and the
# replay goes on, as in a mirror. The cell boots passive, as a mirror does (only
# the boot-role decision is overridden, as there is no upstream to follow): an
# active cell's boot issues changes of its own (3.x pushes `model:set` and
# `nexs:vers:set` when its code differs from what is stored), which would take
# the offsets the archived entries need; passive, it issues none and starts no
# crons, triggers or dmons. Also safemode, and no network listeners. It must be at
# nexus index FROM after booting, and at TO at the end.
# Prints one JSON line: {"applied": N, "errors": E, "index": I, "boot_seconds": S}.
import sys
import json
import time
import asyncio
import logging

import synapse.cortex as s_cortex
import synapse.lib.msgpack as s_msgpack

logger = logging.getLogger('synbackup.replay')


def boot_passive():
    '''Make a Cortex boot passive (a follower) without an upstream. Patched on the
    class in this process only (2.x's IO worker, a spawned process, must find
    the class under its own name).'''
    cortex = s_cortex.Cortex
    setactive = cortex.setCellActive

    async def passive(self, active):
        # 2.x decides with `mirror is None` inside initNexusSubsystem.
        return await setactive(self, False)

    async def follower(self):
        # 3.x: the boot-time leadership decision.
        return False

    cortex.setCellActive = passive
    if hasattr(cortex, '_getBootActive'):
        cortex._getBootActive = follower


def fail(mesg):
    sys.stderr.write(f'synbackup replay: {mesg}\n')
    sys.exit(3)


async def main(dirn, frm, to):
    conf = {
        'safemode': True,
        'nexslog:en': True,
        'dmon:listen': None,
        'https:port': None,
    }
    boot_passive()
    t0 = time.monotonic()
    core = await s_cortex.Cortex.anit(dirn, conf=conf)
    booted = time.monotonic() - t0
    try:
        nexs = core.nexsroot
        if core.isactive:
            fail('the restored cell booted active')
        indx = await nexs.index()
        if indx != frm:
            fail(f'the restored cell booted at nexus index {indx}, the backup recorded {frm}')
        applied = errors = 0
        for offs, _rtime, item in s_msgpack.iterfd(sys.stdin.buffer):
            if offs >= to:
                break
            here = nexs.nexslog.index()
            if offs != here:
                fail(f'entry {offs} is not the next one for the restored cell (its log is at {here})')
            try:
                await nexs.eat(*item)
            except Exception as e:
                errors += 1
                logger.warning(f'entry {offs} raised {e!r} (as on the leader; the replay goes on)')
            applied += 1
        final = await nexs.index()
        if final != to:
            fail(f'the restored cell is at nexus index {final} after the replay, not {to}')
    finally:
        await core.fini()
    print(json.dumps({'applied': applied, 'errors': errors, 'index': final,
                      'boot_seconds': booted}), flush=True)


if __name__ == '__main__':
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))

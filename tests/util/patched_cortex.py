# SPDX-License-Identifier: Apache-2.0
"""Runs the real Synapse Cortex server with one function patched, for the fault tests.

  python patched_cortex.py [synapse.servers.cortex arguments]

Selected by environment variables (none set: the plain server):

  SYNTEST_SLOW_SYNC=SECS     os.sync sleeps SECS first: freeze()'s flush is slow
  SYNTEST_RESUME_FAILS=N     Cell.resume raises SynErr on its first N calls
  SYNTEST_EVENTS=FILE        appends "freeze T", "resumed T" and "resume-failed T"
                             lines (time.time()) on each Cell.freeze call, successful
                             resume and failed one, so a test can tell how long the
                             service stayed frozen
  SYNTEST_CERTS_RELOAD=noop  the https:certs reload handler answers success but
                             loads nothing: the old certificate stays served
  SYNTEST_CERTS_RELOAD=absent  no https:certs reload handler, as in a version
                             that cannot reload its HTTPS certificates
  SYNTEST_DELAY_LISTEN=SECS  the first listen on the unix socket (DIR/sock) waits
                             SECS first: the cell holds its files and its cell.guid
                             lock but does not answer, as while it boots; appends
                             "listen-delayed T" and "listening T" to SYNTEST_EVENTS

Runs with Synapse 2.256 and 3.7.0 alike (Daemon.listen and Cell.freeze/resume
are the same there).

Everything else is the real server, from the venv's synapse.
"""
import asyncio
import os
import sys
import time

import synapse.cortex as s_cortex
import synapse.daemon as s_daemon
import synapse.exc as s_exc
import synapse.lib.cell as s_cell


def event(kind):
    path = os.environ.get('SYNTEST_EVENTS')
    if path:
        with open(path, 'a') as f:
            f.write(f'{kind} {time.time():.3f}\n')


def patch():
    slow = float(os.environ.get('SYNTEST_SLOW_SYNC', '0'))
    if slow > 0:
        real_sync = os.sync

        def slow_sync():
            time.sleep(slow)
            real_sync()

        os.sync = slow_sync

    fails = [int(os.environ.get('SYNTEST_RESUME_FAILS', '0'))]
    real_freeze = s_cell.Cell.freeze
    real_resume = s_cell.Cell.resume

    async def freeze(self, timeout=30):
        event('freeze')
        return await real_freeze(self, timeout=timeout)

    async def resume(self):
        if fails[0] > 0:
            fails[0] -= 1
            event('resume-failed')
            raise s_exc.SynErr(mesg='injected resume failure (SYNTEST_RESUME_FAILS)')
        retn = await real_resume(self)
        event('resumed')
        return retn

    s_cell.Cell.freeze = freeze
    s_cell.Cell.resume = resume

    delay = [float(os.environ.get('SYNTEST_DELAY_LISTEN', '0'))]
    if delay[0] > 0:
        real_listen = s_daemon.Daemon.listen

        async def listen(self, url, **opts):
            if url.startswith('unix://') and delay[0] > 0:
                secs, delay[0] = delay[0], 0
                event('listen-delayed')
                await asyncio.sleep(secs)
                event('listening')
            return await real_listen(self, url, **opts)

        s_daemon.Daemon.listen = listen

    certs_reload = os.environ.get('SYNTEST_CERTS_RELOAD')
    if certs_reload in ('noop', 'absent'):
        real_add = s_cell.Cell.addReloadableSystem

        def add_reloadable(self, name, func):
            if name == 'https:certs':
                if certs_reload == 'absent':
                    return None

                def func():
                    return True
            return real_add(self, name, func)

        s_cell.Cell.addReloadableSystem = add_reloadable


if __name__ == '__main__':
    patch()
    asyncio.run(s_cortex.Cortex.execmain(sys.argv[1:]))
